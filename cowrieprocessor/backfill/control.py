"""Steering a running job from another terminal, through its row in the progress table.

Both sides of the protocol live here. ``cowrie-db control`` (the operator) writes the
row's control columns; the running engine (:mod:`.governor`) reads them back in the
statement that saves its progress after each batch (and once a second while it waits),
and writes its own state beside them (``run_state``, ``run_info``, ``heartbeat_at``).
So a command needs no channel but the database the job already writes to, works the
same whether the job was started by ``alembic upgrade head`` or by ``cowrie-db``, and is
picked up within one batch.

- ``pause``: the engine waits between two batches (no transaction open) until
  ``resume``; ``resume`` clears a pause (a stop, once asked for, stays asked for).
- ``stop``: the engine stops after the current batch, as Ctrl-C does; a rerun resumes.
- ``set name=value ...``: number knobs, validated as at start, applied from the next
  batch; each ``set`` adds to the earlier ones of the same run.

A command is for the job running *now*: with none running it is refused (a pause
must never lie in wait for the next deploy), and each run discards what an earlier
run left in its row when it starts (:func:`claim`). Which job is running: on
PostgreSQL, the holder of the backfill's advisory lock (the backend pid the engine
recorded); on SQLite, the engine's process if it is on this host, else a heartbeat
younger than :data:`HEARTBEAT_FRESH_S`.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from cowrieprocessor.backfill import lock, progress
from cowrieprocessor.backfill.errors import BackfillError
from cowrieprocessor.backfill.knobs import BackfillKnobs, KnobError
from cowrieprocessor.backfill.progress import progress_table, utcnow

PAUSE, STOP = "pause", "stop"
# run_state values: a job that holds one of ACTIVE is running (or was, until killed)
RUNNING, THROTTLED, PAUSED, STOPPING = "running", "throttled", "paused", "stopping"
STOPPED, FINISHED = "stopped", "finished"
ACTIVE = (RUNNING, THROTTLED, PAUSED, STOPPING)
HEARTBEAT_FRESH_S = 60.0  # SQLite on another host: alive while it heartbeats this often
SET_SOURCE = "cowrie-db control set"


class NoJobRunning(BackfillError):
    """``cowrie-db control`` found no running job to steer (exit status 1)."""


@dataclass(frozen=True)
class Command:
    """The control columns of a job's row, as the engine reads them."""

    control: str | None = None
    knobs: dict[str, str] = field(default_factory=dict)
    seq: int = 0
    at: datetime | None = None

    @classmethod
    def of(cls, row: dict[str, Any] | None) -> Command:
        if row is None:
            return cls()
        return cls(
            control=row["control"],
            knobs=json.loads(row["control_knobs"]) if row["control_knobs"] else {},
            seq=int(row["control_seq"] or 0),
            at=row["control_at"],
        )


def runner() -> dict[str, Any]:
    """Who runs the job: this process, on this host (``run_info``)."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


# --- the engine's side -----------------------------------------------------------------


def claim(conn: Connection, job: str) -> Command:
    """A run starts: discard what an earlier run left in the row's control columns.

    Returns what was discarded (for the log). Call in a transaction, after
    :func:`progress.ensure_table` and before the first batch."""
    row = (
        conn.execute(
            sa.select(*(progress_table.c[c] for c in progress.CONTROL_COLUMNS)).where(
                progress_table.c.job == job
            )
        )
        .mappings()
        .first()
    )
    left = Command.of(dict(row) if row is not None else None)
    conn.execute(
        progress_table.update()
        .where(progress_table.c.job == job)
        .values(control=None, control_knobs=None, control_seq=0, control_at=None)
    )
    return left


def heartbeat(conn: Connection, job: str, run: dict[str, Any]) -> Command:
    """Write the engine's state (``run``) and read the commands, in one statement."""
    found = (
        conn.execute(
            progress_table.update()
            .where(progress_table.c.job == job)
            .values(**run)
            .returning(*(progress_table.c[c] for c in progress.CONTROL_COLUMNS))
        )
        .mappings()
        .first()
    )
    return Command.of(dict(found) if found is not None else None)


# --- the operator's side ---------------------------------------------------------------


@dataclass(frozen=True)
class RunningJob:
    job: str
    run_state: str
    info: dict[str, Any]
    heartbeat_at: datetime | None
    control: str | None
    control_seq: int

    def describe(self) -> str:
        who = self.info.get("pid"), self.info.get("host")
        return f"{self.job} (pid {who[0]} on {who[1]}, {self.run_state})"


def running_job(conn: Connection) -> RunningJob | None:
    """The job running now on this database, or None. Ends the read transaction."""
    try:
        if not progress.has_table(conn):
            return None
        if progress.lacks_run_columns(conn):
            return None  # written by an earlier release: nothing steerable runs
        t = progress_table
        rows = conn.execute(
            sa.select(
                t.c.job, t.c.run_state, t.c.run_info, t.c.heartbeat_at, t.c.control, t.c.control_seq
            )
            .where(t.c.run_state.in_(ACTIVE))
            .order_by(t.c.heartbeat_at.desc())
        ).all()
        candidates = [
            RunningJob(
                r.job,
                r.run_state,
                json.loads(r.run_info) if r.run_info else {},
                progress.as_utc(r.heartbeat_at),
                r.control,
                int(r.control_seq or 0),
            )
            for r in rows
        ]
        if conn.dialect.name == "postgresql":
            holder = lock.holder_pid(conn)
            alive = [
                c for c in candidates if holder is not None and c.info.get("backend") == holder
            ]
        else:
            alive = [c for c in candidates if _alive_here(c)]
        return alive[0] if alive else None
    finally:
        conn.rollback()


def _alive_here(job: RunningJob) -> bool:
    pid, host = job.info.get("pid"), job.info.get("host")
    if host == socket.gethostname() and isinstance(pid, int):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    if job.heartbeat_at is None:
        return False
    return (utcnow() - job.heartbeat_at).total_seconds() < HEARTBEAT_FRESH_S


def require_running(conn: Connection) -> RunningJob:
    found = running_job(conn)
    if found is None:
        raise NoJobRunning(
            "no backfill or clear is running on this database: nothing to steer "
            "(a command is only for a job that runs now)"
        )
    return found


def request(conn: Connection, command: str, settings: dict[str, str] | None = None) -> RunningJob:
    """Send ``command`` (pause, resume, stop, set) to the running job; returns the job.

    ``set`` validates ``settings`` as at start (:class:`KnobError` naming a bad one,
    nothing written). Raises :class:`NoJobRunning` when no job runs."""
    job = require_running(conn)
    t = progress_table
    where = t.c.job == job.job
    if conn.dialect.name == "sqlite":  # write lock first: a read snapshot cannot upgrade
        conn = conn.execution_options(sqlite_begin="IMMEDIATE")
    with conn.begin():
        if command == "set":
            assert settings is not None
            BackfillKnobs().with_overrides(settings, SET_SOURCE)  # refuse before writing
            if conn.dialect.name == "sqlite" and "lock_timeout" in settings:
                raise KnobError(
                    "lock_timeout cannot change while a job runs on SQLite (it is the "
                    "connection's busy timeout): stop the job and rerun it with the new value"
                )
            current = conn.execute(sa.select(t.c.control_knobs).where(where)).scalar()
            merged = {**(json.loads(current) if current else {}), **settings}
            values: dict[str, Any] = {
                "control_knobs": json.dumps(merged, sort_keys=True),
                "control_seq": t.c.control_seq + 1,
            }
        elif command == PAUSE:
            values = {"control": PAUSE}
            where = where & sa.or_(t.c.control.is_(None), t.c.control != STOP)
        elif command == "resume":
            values = {"control": None}
            where = where & (t.c.control == PAUSE)
        elif command == STOP:
            values = {"control": STOP}
        else:
            raise KnobError(f"unknown control command {command!r}")
        conn.execute(t.update().where(where).values(control_at=utcnow(), **values))
    return job
