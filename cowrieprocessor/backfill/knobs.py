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
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
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
    unit: str  # "" for counts, "ms" for durations (which also accept s / min suffixes)
    help: str

    def parse(self, raw: str, source: str) -> int:
        text = raw.strip().lower()
        scale = 1
        if self.unit == "ms":
            match = re.fullmatch(r"(\d+)\s*(ms|s|min)?", text)
            if match:
                text = match.group(1)
                scale = {"ms": 1, "s": 1000, "min": 60_000, None: 1}[match.group(2)]
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
        suffix = " ms (or with s / min)" if self.unit == "ms" else ""
        return f"{self.minimum}..{self.maximum}{suffix}"


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
)
KNOB_NAMES = frozenset({k.name for k in INT_KNOBS} | {"status_file"})
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
    status_file: Path | None = None

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
        return cls(**values)  # type: ignore[arg-type]

    def as_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


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
