"""Durable progress: a small table in the same database, and an optional status file.

The table holds one row per job. A batch's UPDATE and the row's new position commit
in the same transaction, so after any interruption (Ctrl-C, ``kill -9``, a lost
connection, a reboot) the row says exactly which ranges are done, and a rerun resumes
after the last committed one. The status file is a convenience for ``watch cat``;
it is rewritten atomically (write a temporary file, then rename) after each batch and
never holds credentials.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

PROGRESS_TABLE = "cowrie_backfill_progress"

metadata = sa.MetaData()
progress_table = sa.Table(
    PROGRESS_TABLE,
    metadata,
    sa.Column("job", sa.String(64), primary_key=True),
    sa.Column("phase", sa.String(16), nullable=False),
    sa.Column("last_key", sa.String(64)),
    sa.Column("sessions_total", sa.BigInteger, nullable=False, default=0),
    sa.Column("sessions_walked", sa.BigInteger, nullable=False, default=0),
    sa.Column("rows_updated", sa.BigInteger, nullable=False, default=0),
    sa.Column("matched", sa.BigInteger, nullable=False, default=0),
    sa.Column("unmatched_no_ip", sa.BigInteger, nullable=False, default=0),
    sa.Column("unmatched_not_in_inventory", sa.BigInteger, nullable=False, default=0),
    sa.Column("batches", sa.Integer, nullable=False, default=0),
    sa.Column("retries", sa.Integer, nullable=False, default=0),
    sa.Column("splits", sa.Integer, nullable=False, default=0),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    # The running job, written by its engine with each batch and each second it waits
    # (:class:`.run.Run`): its state, what it waits for, the knobs in force, its process.
    sa.Column("run_state", sa.String(16)),
    sa.Column("run_info", sa.Text),
    sa.Column("heartbeat_at", sa.DateTime(timezone=True)),
    # Commands for the running job, written by `cowrie-db control` (:mod:`.control`).
    sa.Column("control", sa.String(16)),
    sa.Column("control_knobs", sa.Text),
    sa.Column("control_seq", sa.Integer, nullable=False, server_default="0"),
    sa.Column("control_at", sa.DateTime(timezone=True)),
    # A partitioned session_summaries: the leaf that last_key is in (leaves are walked
    # one after the other in the order of their names; :mod:`cowrieprocessor.db.partitions`).
    sa.Column("leaf", sa.String(255)),
    # A worker's stripe (:mod:`.workers`): the job's keys in (stripe_lo, stripe_hi]
    # (None: from the start, to the end), in its own row "<job>/<n>".
    sa.Column("stripe_lo", sa.String(64)),
    sa.Column("stripe_hi", sa.String(64)),
    # A walk by blocks (:mod:`.blocks`): its plan (the table's file, the oldest
    # transaction running when it began, rounds, blocks), which its positions refer to.
    sa.Column("walk_plan", sa.String(128)),
)
# Columns added after the first release: ensure_table adds them to an older table.
RUN_COLUMNS = (
    "run_state",
    "run_info",
    "heartbeat_at",
    "control",
    "control_knobs",
    "control_seq",
    "control_at",
)
LATER_COLUMNS = (*RUN_COLUMNS, "leaf", "stripe_lo", "stripe_hi", "walk_plan")

# Phases of a job, in order. "done" is final; a later run starts a fresh walk.
WALK, CATCHUP, DONE = "walk", "catchup", "done"


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class JobState:
    """The progress row of one job, as a plain object."""

    job: str
    phase: str = WALK
    last_key: str | None = None
    sessions_total: int = 0
    sessions_walked: int = 0
    rows_updated: int = 0
    matched: int = 0
    unmatched_no_ip: int = 0
    unmatched_not_in_inventory: int = 0
    batches: int = 0
    retries: int = 0
    splits: int = 0
    started_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)
    finished_at: datetime | None = None
    leaf: str | None = None
    stripe_lo: str | None = None
    stripe_hi: str | None = None
    walk_plan: str | None = None

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


def ensure_table(conn: Connection) -> None:
    """Create the table, or add the columns a table of an earlier release lacks."""
    if not sa.inspect(conn).has_table(PROGRESS_TABLE):
        progress_table.create(conn)
        return
    for name in missing_columns(conn):
        # the column's spec as the dialect compiles it, its name quoted; the table's too
        spec = sa.schema.CreateColumn(progress_table.c[name]).compile(dialect=conn.dialect)
        table = conn.dialect.identifier_preparer.quote(PROGRESS_TABLE)
        conn.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN {spec}"))


def missing_columns(conn: Connection) -> list[str]:
    """The columns added since the first release that an existing table lacks."""
    have = {c["name"] for c in sa.inspect(conn).get_columns(PROGRESS_TABLE)}
    return [name for name in LATER_COLUMNS if name not in have]


def lacks_run_columns(conn: Connection) -> bool:
    """Whether the table was written by the first release, before the engine's state and
    the operator's commands had columns (:func:`ensure_table` adds them together)."""
    return any(name in RUN_COLUMNS for name in missing_columns(conn))


def has_table(conn: Connection) -> bool:
    return sa.inspect(conn).has_table(PROGRESS_TABLE)


def load(conn: Connection, job: str) -> JobState | None:
    found = _load(conn, progress_table.c.job == job)
    return found[0] if found else None


# The rows of a job's workers are named "<job>/<n>" (:mod:`.workers`).
WORKER_SEP = "/"


def workers_of(job: str) -> sa.ColumnElement[bool]:
    """The rows of ``job``'s workers' stripes ("<job>/<n>"), compared as a prefix, not
    with LIKE: "_" in a job's name is a LIKE wildcard."""
    prefix = job + WORKER_SEP
    return sa.func.substr(progress_table.c.job, 1, len(prefix)) == prefix


def load_workers(conn: Connection, job: str) -> list[JobState]:
    """The rows of ``job``'s workers' stripes, in the order of their names."""
    return sorted(_load(conn, workers_of(job)), key=lambda state: state.job)


def delete_workers(conn: Connection, job: str) -> None:
    if has_table(conn):
        conn.execute(progress_table.delete().where(workers_of(job)))


def sessions_done(state: JobState) -> int:
    """Sessions of its phase that ``state`` has walked (all of them once it is done)."""
    return state.sessions_total if state.phase == DONE else state.sessions_walked


def with_stripes(state: JobState, stripes: list[JobState]) -> JobState:
    """``state`` with its workers' stripes walked so far added (their rows keep their
    counts until the walk ends: :mod:`.workers`), as ``status`` and the engine show it."""
    if not stripes:
        return state
    return replace(
        state,
        sessions_walked=state.sessions_walked + sum(map(sessions_done, stripes)),
        rows_updated=state.rows_updated + sum(s.rows_updated for s in stripes),
        batches=state.batches + sum(s.batches for s in stripes),
    )


def _load(conn: Connection, where: sa.ColumnElement[bool]) -> list[JobState]:
    if not has_table(conn):
        return []
    have = {c["name"] for c in sa.inspect(conn).get_columns(PROGRESS_TABLE)}
    state_columns = [progress_table.c[f.name] for f in fields(JobState) if f.name in have]
    states = []
    for row in conn.execute(sa.select(*state_columns).where(where)).mappings():
        state = JobState(**dict(row))
        for name in ("started_at", "updated_at", "finished_at"):
            setattr(state, name, as_utc(getattr(state, name)))
        states.append(state)
    return states


def as_utc(value: datetime | None) -> datetime | None:
    """A time read back from the table: SQLite drops the zone, and it was UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


CONTROL_COLUMNS = ("control", "control_knobs", "control_seq", "control_at")


def save(
    conn: Connection, state: JobState, run: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """Upsert the job's row (call inside the batch's transaction), with the running
    engine's columns ``run`` if given. Returns the row's control columns, read in the
    same statement (None when the row was new)."""
    state.updated_at = utcnow()
    row = {**state.as_row(), **(run or {})}
    update = progress_table.update().where(progress_table.c.job == state.job).values(**row)
    found = (
        conn.execute(update.returning(*(progress_table.c[c] for c in CONTROL_COLUMNS)))
        .mappings()
        .first()
    )
    if found is None:
        conn.execute(progress_table.insert().values(**row))
        return None
    return dict(found)


def delete(conn: Connection, job: str) -> None:
    if sa.inspect(conn).has_table(PROGRESS_TABLE):
        conn.execute(progress_table.delete().where(progress_table.c.job == job))


def drop_table(conn: Connection) -> None:
    progress_table.drop(conn, checkfirst=True)


MAX_WAIT_SHARE = 0.99  # waiting nearly all the time (paused, held back): no ETA


def rate_and_eta(done: float, elapsed: float, remaining: float) -> tuple[float, float | None]:
    """Sessions per second (``done`` in ``elapsed`` seconds) and the seconds the
    ``remaining`` sessions take at that rate (None while nothing is done)."""
    rate = done / elapsed if elapsed > 0 else 0.0
    return rate, (remaining / rate if rate > 0 else None)


@dataclass(frozen=True)
class Progress:
    """Where a job stands: the status file, ``cowrie-db status`` and the progress lines.

    ``percent`` is always of the whole job (each phase weighs the same: every phase
    walks every session), ``phase_percent`` of the current phase; ``eta_seconds`` is to
    the end of the whole job, at ``rate`` sessions per second.
    """

    job: str
    phase: str
    phases: tuple[str, ...]  # the job's phases, in order (DONE is after the last)
    batch: int
    done: int  # sessions of the current phase
    total: int  # sessions in one phase
    rows_updated: int
    rate: float
    eta_seconds: float | None
    started_at: str
    updated_at: str
    dry_run: bool = False
    # a partitioned session_summaries: the partition being walked
    leaf: str | None = None
    # the running engine (:class:`.run.Run`): its state, what holds it back, the share of
    # the recent wall clock spent waiting, the knobs in force, its waits per signal
    run_state: str = ""
    run_detail: str = ""
    wait_share: float = 0.0
    knobs: dict[str, str] = field(default_factory=dict)
    waits: dict[str, dict[str, float]] = field(default_factory=dict)
    # with workers: each one's stripe and where it stands (:func:`worker_view`)
    workers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def processed(self) -> int:
        """Sessions walked over the whole job so far."""
        if self.phase not in self.phases:  # DONE: every phase walked
            return self.total * len(self.phases)
        return self.phases.index(self.phase) * self.total + self.done

    @property
    def percent(self) -> float:
        whole = self.total * len(self.phases)
        return round(100.0 * self.processed / whole, 2) if whole else 100.0

    @property
    def phase_percent(self) -> float:
        return round(100.0 * self.done / self.total, 2) if self.total else 100.0

    @classmethod
    def of(
        cls,
        state: JobState,
        phases: tuple[str, ...],
        *,
        phase: str,
        done: int,
        elapsed: float,
        walked: int | None = None,
        wait_share: float = 0.0,
        dry_run: bool = False,
    ) -> Progress:
        """The progress of ``state`` in ``phase``, ``done`` of its sessions walked; the
        rate is ``walked`` sessions (default: all the job has walked) in ``elapsed``
        seconds of work; the ETA slows that rate by ``wait_share``, the share of the
        recent wall clock spent waiting (none while it is all waiting: paused)."""
        made = cls(
            job=state.job,
            phase=phase,
            phases=phases,
            batch=state.batches,
            done=done,
            total=state.sessions_total,
            rows_updated=state.rows_updated,
            rate=0.0,
            eta_seconds=None,
            started_at=state.started_at.isoformat(),
            updated_at=state.updated_at.isoformat(),
            dry_run=dry_run,
            leaf=state.leaf,
        )
        remaining = made.total * len(phases) - made.processed
        walked = made.processed if walked is None else walked
        rate, eta = rate_and_eta(walked, elapsed, remaining)
        if eta is not None and remaining > 0:
            eta = eta / (1.0 - wait_share) if wait_share < MAX_WAIT_SHARE else None
        return replace(
            made,
            rate=round(rate, 1),
            eta_seconds=None if eta is None else round(eta, 1),
            wait_share=round(wait_share, 3),
        )

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(percent=self.percent, phase_percent=self.phase_percent)
        return data

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, sort_keys=True)


def write_status_file(path: Path, snapshot: Progress) -> None:
    """Replace ``path`` atomically, so a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(snapshot.to_json() + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of ``values`` (0.0 when empty)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(fraction * len(ordered))))
    return ordered[rank - 1]


def _blocks_stripe(state: JobState) -> str | None:
    """A stripe of a walk by blocks as the table's blocks it covers, else None."""
    if state.walk_plan is None or state.stripe_lo is None:
        return None
    from cowrieprocessor.backfill import blocks  # above this module: blocks -> keys -> progress

    return blocks.describe_stripe(state.walk_plan, state.stripe_lo, state.stripe_hi)


def worker_view(state: JobState, run_state: str = "") -> dict[str, Any]:
    """One worker's stripe and where it stands, as ``status`` and the status file show
    it: its row's name, the partition or key range it walks, sessions walked of about
    how many, rows updated, batches, and its state (``running``, ``finished``, ...)."""
    by_blocks = _blocks_stripe(state)
    if state.leaf is not None and state.stripe_lo is None and state.stripe_hi is None:
        where = f"partition {state.leaf}"
    elif by_blocks is not None:
        where = by_blocks
    else:
        lo = "(start" if state.stripe_lo is None else f"({state.stripe_lo!r}"
        hi = "end)" if state.stripe_hi is None else f"{state.stripe_hi!r}]"
        where = f"session_id {lo}, {hi}"
    return {
        "worker": state.job,
        "stripe": where,
        "phase": state.phase,
        "done": sessions_done(state),
        "total": state.sessions_total,
        "rows_updated": state.rows_updated,
        "batches": state.batches,
        "state": run_state,
    }
