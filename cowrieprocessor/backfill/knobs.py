"""The backfill's knobs: defaults, sources and validation.

Each knob comes from the first of: an explicit value (``alembic -x name=value``, or a
CLI flag), the environment variable ``COWRIE_BACKFILL_<NAME>``, the default below.
Every value is parsed into a number (or a path) and range-checked *before* anything is
written; a bad one fails with a message that names the knob, the value and the allowed
range. No knob value ever reaches SQL as text: timeouts are passed as bound parameters.

Batch sizing. By default batches are *adaptive*: the first one is small (1,000 rows)
and each next one is resized (at most doubled, at least halved) so that a batch takes
about ``batch_time``, never more than ``batch_size`` rows. A slow or busy server thus
gets short batches (row locks held briefly) and a fast one gets few commits. Setting
``batch_size`` (and not ``batch_time``) pins fixed ranges of exactly that many
``session_id`` keys, the classic walk whose ranges a runbook can reason about;
``batch_time=0`` does the same with the default size.

Health (PostgreSQL). ``max_replica_lag`` and ``max_wal_rate`` hold batches back while
a standby falls behind or the backfill writes WAL too fast (:mod:`.health`). Sizes
take PostgreSQL's units (``kB``, ``MB``, ``GB``, ``TB``: powers of 1024).

Runtime. Every number knob can be changed while a job runs (``cowrie-db control set``,
:mod:`.control`), validated by the same parser as at start: :meth:`BackfillKnobs.with_overrides`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path

from cowrieprocessor.errors import CowrieError

ENV_PREFIX = "COWRIE_BACKFILL_"
DEFAULT_BATCH_TIME_MS = 250
# -x keys that belong to others (env.py reads `db`), not to the backfill.
FOREIGN_X_KEYS = frozenset({"db"})


class KnobError(CowrieError, ValueError):
    """A knob has a bad value; the message names the knob and the allowed range."""


@dataclass(frozen=True)
class IntKnob:
    name: str
    default: int
    minimum: int
    maximum: int
    # "" for counts, "ms" for durations (which also accept s / min suffixes), "bytes"
    # and "bytes/s" for sizes and rates (which accept kB, MB, GB, TB, and /s for rates)
    unit: str
    help: str

    def parse(self, raw: str, source: str) -> int:
        text = raw.strip().lower()
        scale = 1
        pattern, scales = _UNIT_SYNTAX.get(self.unit, (None, {}))
        if pattern is not None:
            match = re.fullmatch(pattern, text)
            if match:
                text = match.group(1)
                scale = scales[match.group(2)]
        if not re.fullmatch(r"\d+", text):
            raise KnobError(
                f"{self.name}={raw!r} (from {source}) is not a whole number; "
                f"allowed: {self.describe_range()}"
            )
        # Longer than any allowed value: refuse by name (and spare int() a huge parse).
        digits = text.lstrip("0") or "0"
        value = int(digits) * scale if len(digits) <= 18 else self.maximum + 1
        if not self.minimum <= value <= self.maximum:
            raise KnobError(
                f"{self.name}={raw!r} (from {source}) is out of range; "
                f"allowed: {self.describe_range()}"
            )
        return value

    def describe_range(self) -> str:
        if self.unit in ("bytes", "bytes/s"):
            per = "/s" if self.unit == "bytes/s" else ""
            return f"0 (off), or 1..{show_bytes(self.maximum)}{per} (bytes, or with kB, MB, GB, TB)"
        return f"{self.minimum}..{self.maximum}{_UNIT_SUFFIX.get(self.unit, '')}"

    def show(self, value: int) -> str:
        """``value`` as an operator writes it: ``250 ms``, ``256 MB``, ``32 MB/s``, ``off``."""
        if self.unit in ("bytes", "bytes/s"):
            per = "/s" if self.unit == "bytes/s" else ""
            return "off" if value == 0 else show_bytes(value) + per
        return f"{value} ms" if self.unit == "ms" else str(value)


_SIZES: dict[str | None, int] = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "g": 1024**3,
}
_SIZES |= {"gb": 1024**3, "t": 1024**4, "tb": 1024**4}
_UNIT_SYNTAX: dict[str, tuple[str, dict[str | None, int]]] = {
    "ms": (r"(\d+)\s*(ms|s|min)?", {"ms": 1, "s": 1000, "min": 60_000, None: 1}),
    "bytes": (r"(\d+)\s*(b|kb?|mb?|gb?|tb?)?", {None: 1, **_SIZES}),
    "bytes/s": (r"(\d+)\s*(b|kb?|mb?|gb?|tb?)?(?:\s*/\s*s)?", {None: 1, **_SIZES}),
}
_UNIT_SUFFIX = {"ms": " ms (or with s / min)"}


def show_bytes(value: float) -> str:
    """``value`` bytes in the largest PostgreSQL unit that keeps it at least 1."""
    for unit, size in (("TB", 1024**4), ("GB", 1024**3), ("MB", 1024**2), ("kB", 1024)):
        if abs(value) >= size:
            shown = value / size
            return f"{shown:.0f} {unit}" if shown == int(shown) else f"{shown:.1f} {unit}"
    return f"{value:.0f} bytes"


INT_KNOBS: tuple[IntKnob, ...] = (
    IntKnob(
        "batch_size",
        20_000,
        1,
        1_000_000,
        "",
        "rows per range when batches are fixed (batch_time=0, or batch_size set alone); "
        "otherwise the largest an adaptive batch may grow (the catch-up pass, which "
        "writes next to nothing, may read 10 times as many); each range is one UPDATE "
        "and one commit",
    ),
    IntKnob(
        "batch_time",
        DEFAULT_BATCH_TIME_MS,
        0,
        600_000,
        "ms",
        "adaptive batches: the time one batch should take (0 = fixed batches of "
        "batch_size); the default unless batch_size is set",
    ),
    IntKnob(
        "pause_ms",
        0,
        0,
        60_000,
        "ms",
        "sleep between batches, to leave I/O to a busy production server",
    ),
    IntKnob(
        "lock_timeout",
        2_000,
        1,
        600_000,
        "ms",
        "longest wait for a row lock before the batch is retried (SQLite: busy timeout)",
    ),
    IntKnob(
        "statement_timeout",
        60_000,
        0,
        86_400_000,
        "ms",
        "longest a batch's UPDATE may run before its range is split (0 = none; PostgreSQL only)",
    ),
    IntKnob(
        "max_retries",
        5,
        0,
        100,
        "",
        "retries of a range after a transient failure, with exponential backoff",
    ),
    IntKnob(
        "log_interval",
        5_000,
        0,
        3_600_000,
        "ms",
        "how often progress is logged (0 = a line after every batch, with its duration)",
    ),
    IntKnob(
        "max_replica_lag",
        256 * 1024**2,
        0,
        1024**4,
        "bytes",
        "PostgreSQL: wait before a batch while a connected standby's replay, or an active "
        "replication slot, is so far behind the primary's WAL that the batch would take it "
        "past this (0 = off)",
    ),
    IntKnob(
        "max_wal_rate",
        0,
        0,
        1024**4,
        "bytes/s",
        "PostgreSQL: space batches so that the WAL written while they run stays under "
        "this many bytes per second, e.g. 32MB/s (0 = off)",
    ),
)
# How a PostgreSQL batch finds again the rows it resolved: by ``ctid`` (a TID scan; one
# table's row versions only), or by ``session_id`` (Citus; :mod:`cowrieprocessor.backfill.sql`).
# ``auto``: by key when the citus extension is installed, else by ctid.
JOIN_BACK_CHOICES = ("auto", "ctid", "key")
KNOB_NAMES = frozenset(
    {k.name for k in INT_KNOBS}
    | {"status_file", "join_back", "workers", "defer_indexes", "walk_order"}
)
# defer_indexes (PostgreSQL, :mod:`.deferred_indexes`): drop the indexes on the snapshot
# columns for the walk (its updates can then be HOT) and build them again after it.
ON_OFF = ("off", "on")
# walk_order (:mod:`.blocks`): the walk's ranges are of session_id, or of the table's
# blocks, each range walked in rounds (far less WAL after a checkpoint; PostgreSQL 14+);
# ``auto``: by blocks wherever :func:`.blocks.refusal` finds nothing against it, else by key.
WALK_ORDERS = ("auto", "key", "blocks")
# Workers (PostgreSQL, :mod:`.workers`): N connections walking disjoint stripes at once;
# ``auto``: one per partition of a partitioned table (one on a plain table), at most
# AUTO_WORKERS, or at most N with ``auto:N``.
MAX_WORKERS = 64
AUTO_WORKERS = 4
DEFAULTS = {k.name: k.default for k in INT_KNOBS}  # from the table above, never re-typed


@dataclass(frozen=True)
class BackfillKnobs:
    batch_size: int = DEFAULTS["batch_size"]
    batch_time: int = DEFAULTS["batch_time"]
    pause_ms: int = DEFAULTS["pause_ms"]
    lock_timeout: int = DEFAULTS["lock_timeout"]
    statement_timeout: int = DEFAULTS["statement_timeout"]
    max_retries: int = DEFAULTS["max_retries"]
    log_interval: int = DEFAULTS["log_interval"]
    max_replica_lag: int = DEFAULTS["max_replica_lag"]
    max_wal_rate: int = DEFAULTS["max_wal_rate"]
    status_file: Path | None = None
    join_back: str = "auto"
    workers: int = 1  # at most this many at once
    workers_per_leaf: bool = False  # workers=auto: one per partition
    defer_indexes: bool = False
    walk_order: str = "auto"

    @property
    def adaptive(self) -> bool:
        """Batches resized toward ``batch_time`` (else fixed ranges of ``batch_size``)."""
        return self.batch_time > 0

    @classmethod
    def from_sources(
        cls,
        explicit: Mapping[str, str | int | None] | None = None,
        environ: Mapping[str, str] | None = None,
        *,
        ignore_keys: frozenset[str] = FOREIGN_X_KEYS,
    ) -> BackfillKnobs:
        """Resolve every knob from ``explicit`` (e.g. ``-x``), then the environment."""
        explicit = {k: v for k, v in (explicit or {}).items() if v is not None}
        environ = os.environ if environ is None else environ
        unknown = sorted(set(explicit) - KNOB_NAMES - ignore_keys)
        if unknown:
            raise KnobError(
                f"unknown backfill knob(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(KNOB_NAMES))}"
            )
        env_unknown = sorted(
            key
            for key in environ
            if key.startswith(ENV_PREFIX) and key[len(ENV_PREFIX) :].lower() not in KNOB_NAMES
        )
        if env_unknown:
            raise KnobError(
                f"unknown environment variable(s) {', '.join(env_unknown)}; known: "
                + ", ".join(ENV_PREFIX + n.upper() for n in sorted(KNOB_NAMES))
            )

        def raw(name: str) -> tuple[str, str] | None:
            if name in explicit:
                return str(explicit[name]), f"-x {name}"
            env_name = ENV_PREFIX + name.upper()
            if env_name in environ:
                return environ[env_name], env_name
            return None

        values: dict[str, object] = {}
        for knob in INT_KNOBS:
            found = raw(knob.name)
            values[knob.name] = knob.default if found is None else knob.parse(*found)
        if raw("batch_size") is not None and raw("batch_time") is None:
            values["batch_time"] = 0  # a batch size given on its own means fixed batches
        found = raw("status_file")
        if found is not None and found[0].strip():
            values["status_file"] = _status_path(found[0].strip(), found[1])
        found = raw("join_back")
        if found is not None:
            values["join_back"] = _choice("join_back", JOIN_BACK_CHOICES, *found)
        found = raw("workers")
        if found is not None:
            values["workers"], values["workers_per_leaf"] = _workers(*found)
        found = raw("defer_indexes")
        if found is not None:
            values["defer_indexes"] = _choice("defer_indexes", ON_OFF, *found) == "on"
        found = raw("walk_order")
        if found is not None:
            values["walk_order"] = _choice("walk_order", WALK_ORDERS, *found)
        return cls(**values)  # type: ignore[arg-type]

    def show_workers(self) -> str:
        """``workers`` as an operator writes it: ``2``, ``auto:4``."""
        return f"auto:{self.workers}" if self.workers_per_leaf else str(self.workers)

    def as_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def with_overrides(self, raw: Mapping[str, str], source: str) -> BackfillKnobs:
        """These knobs with the number knobs in ``raw`` changed (a job that is running:
        ``cowrie-db control set``), each parsed and range-checked as at start, with the
        same rule: ``batch_size`` given without ``batch_time`` means fixed batches.
        Raises :class:`KnobError` naming an unknown knob, a bad value, or ``status_file``
        (a path is chosen at start only)."""
        by_name = {k.name: k for k in INT_KNOBS}
        unknown = sorted(set(raw) - set(by_name))
        if unknown:
            fixed = [n for n in unknown if n in KNOB_NAMES]
            if fixed:
                raise KnobError(f"{', '.join(fixed)} cannot change while a job runs")
            raise KnobError(
                f"unknown backfill knob(s) {', '.join(unknown)}; "
                f"known: {', '.join(k.name for k in INT_KNOBS)}"
            )
        values: dict[str, object] = {
            name: by_name[name].parse(str(value), source) for name, value in raw.items()
        }
        if "batch_size" in raw and "batch_time" not in raw:
            values["batch_time"] = 0
        return replace(self, **values)  # type: ignore[arg-type]

    def describe(self) -> dict[str, str]:
        """The number knobs, ``workers``, ``defer_indexes`` and ``walk_order`` as an
        operator writes them (``status``, the logs)."""
        shown = {k.name: k.show(getattr(self, k.name)) for k in INT_KNOBS}
        defer = ON_OFF[self.defer_indexes]
        return {
            **shown,
            "workers": self.show_workers(),
            "defer_indexes": defer,
            "walk_order": self.walk_order,
        }

    def changes(self, new: BackfillKnobs) -> list[str]:
        """``name old -> new`` for each number knob that differs in ``new``."""
        return [
            f"{k.name} {k.show(getattr(self, k.name))} -> {k.show(getattr(new, k.name))}"
            for k in INT_KNOBS
            if getattr(self, k.name) != getattr(new, k.name)
        ]


def _choice(name: str, choices: tuple[str, ...], raw: str, source: str) -> str:
    value = raw.strip().lower()
    if value not in choices:
        raise KnobError(f"{name}={raw!r} (from {source}) is not one of: {', '.join(choices)}")
    return value


def _workers(raw: str, source: str) -> tuple[int, bool]:
    """``workers``: a number, ``auto`` or ``auto:N``; (at most how many, one per leaf)."""
    text = raw.strip().lower()
    head, sep, cap = text.partition(":")
    per_leaf = head.strip() == "auto"
    if per_leaf:
        text = cap.strip() if sep else str(AUTO_WORKERS)
    valid = (per_leaf or not sep) and re.fullmatch(r"\d{1,3}", text)
    if valid and 1 <= int(text) <= MAX_WORKERS:
        return int(text), per_leaf
    raise KnobError(
        f"workers={raw!r} (from {source}) is not a number of workers; allowed: "
        f"1..{MAX_WORKERS}, auto (one per partition, at most {AUTO_WORKERS}) or auto:N "
        "(at most N)"
    )


def _status_path(raw: str, source: str) -> Path:
    path = Path(raw).expanduser()
    if path.is_dir():
        raise KnobError(f"status_file={raw!r} (from {source}) is a directory; give a file path")
    if not path.parent.is_dir():
        raise KnobError(f"status_file={raw!r} (from {source}): folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise KnobError(
            f"status_file={raw!r} (from {source}): folder {path.parent} is not writable"
        )
    return path
