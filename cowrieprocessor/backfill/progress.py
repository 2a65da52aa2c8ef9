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
import os
import tempfile
from dataclasses import asdict, dataclass, field
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
)

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

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


def ensure_table(conn: Connection) -> None:
    progress_table.create(conn, checkfirst=True)


def load(conn: Connection, job: str) -> JobState | None:
    if not sa.inspect(conn).has_table(PROGRESS_TABLE):
        return None
    row = (
        conn.execute(sa.select(progress_table).where(progress_table.c.job == job))
        .mappings()
        .first()
    )
    if row is None:
        return None
    state = JobState(**dict(row))
    for name in ("started_at", "updated_at", "finished_at"):
        value = getattr(state, name)
        if value is not None and value.tzinfo is None:  # SQLite drops the zone; it was UTC
            setattr(state, name, value.replace(tzinfo=UTC))
    return state


def save(conn: Connection, state: JobState) -> None:
    """Upsert the job's row (call inside the batch's transaction)."""
    state.updated_at = utcnow()
    row = state.as_row()
    updated = conn.execute(
        progress_table.update().where(progress_table.c.job == state.job).values(**row)
    )
    if updated.rowcount == 0:
        conn.execute(progress_table.insert().values(**row))


def delete(conn: Connection, job: str) -> None:
    if sa.inspect(conn).has_table(PROGRESS_TABLE):
        conn.execute(progress_table.delete().where(progress_table.c.job == job))


def drop_table(conn: Connection) -> None:
    progress_table.drop(conn, checkfirst=True)


@dataclass(frozen=True)
class Snapshot:
    """What a status file and ``cowrie-db status`` show."""

    job: str
    phase: str
    batch: int
    done: int
    total: int
    percent: float
    rate: float
    eta_seconds: float | None
    started_at: str
    updated_at: str
    rows_updated: int
    dry_run: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def write_status_file(path: Path, snapshot: Snapshot) -> None:
    """Replace ``path`` atomically, so a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(snapshot.to_json() + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
