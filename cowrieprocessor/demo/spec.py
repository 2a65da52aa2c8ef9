"""What to generate (:class:`DemoSpec`), what was written (:class:`DemoResult`), and the
one error the generator raises (:class:`DemoDataError`)."""

from __future__ import annotations

from dataclasses import dataclass

from cowrieprocessor.errors import CowrieError


@dataclass(frozen=True)
class DemoSpec:
    """What to generate: ``sessions`` sessions over ``ips`` inventory IPs."""

    sessions: int
    ips: int
    seed: int = 1
    unmatched_fraction: float = 0.013  # sessions whose canonical IP is NOT in ip_inventory
    ipv6_fraction: float = 0.05  # of inventory IPs
    raw_only_fraction: float = 0.02  # sessions whose IP is known only from raw_events
    asns: int = 0  # 0 = derive (about ips/40, at least 10)


@dataclass
class DemoResult:
    """What was written (new rows only) and how long it took."""

    sessions: int
    ips: int
    asns: int
    raw_events: int
    unmatched_sessions: int
    raw_only_sessions: int
    seconds: float


class DemoDataError(CowrieError):
    """The database or the spec is unsuitable; the message says why and what to do."""


def validate(spec: DemoSpec, chunk_size: int) -> None:
    """Raise :class:`DemoDataError` listing every problem of ``spec`` and ``chunk_size``."""
    problems: list[str] = []
    if spec.sessions < 0:
        problems.append(f"sessions must be >= 0 (got {spec.sessions})")
    if spec.ips < 0:
        problems.append(f"ips must be >= 0 (got {spec.ips})")
    if spec.sessions > 0 and spec.ips < 1:
        problems.append(f"ips must be >= 1 when sessions > 0 (got {spec.ips})")
    if spec.asns < 0:
        problems.append(f"asns must be >= 0 (got {spec.asns})")
    for name in ("unmatched_fraction", "ipv6_fraction", "raw_only_fraction"):
        value = getattr(spec, name)
        if not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
            problems.append(f"{name} must be within [0, 1] (got {value!r})")
    if chunk_size < 1:
        problems.append(f"chunk_size must be >= 1 (got {chunk_size})")
    if problems:
        raise DemoDataError("invalid demo data spec: " + "; ".join(problems))
