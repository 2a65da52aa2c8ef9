"""Steering a running job from another terminal, through its row in the progress table.

Both sides of the protocol live here, with the claim that says which job is running
(one module of ~510 lines: the claim, the commands and the acknowledgement read and
write the same columns of the same row, and each side's rules are the other's).
``cowrie-db control`` (the operator) writes the row's control columns (:func:`request`)
and waits until the engine shows it took the command (:func:`wait_for_ack`); the running
engine (:mod:`.governor`) reads them back in the
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
run left in its row when it starts (:func:`discard_commands`). Which job is running: on
PostgreSQL, the holder of the backfill's advisory lock (the backend pid the engine
recorded); on SQLite, the engine's process if it is on this host (the same pid *and* the
same process start, so a reused pid does not count), else a heartbeat younger than
:data:`HEARTBEAT_FRESH_S`.

One job at a time (the claim, :class:`Claim`): on PostgreSQL the advisory lock
(:mod:`.lock`); on SQLite, which has none that outlives a connection, the job's row in
the progress table: a run starts by reading, in the ``BEGIN IMMEDIATE`` transaction that
writes its row, whether another row names a job that still runs (the same rule as
above), and is refused if so, before it writes anything. A row whose job is gone (its
process killed, or on another host silent for :data:`HEARTBEAT_FRESH_S`) is taken over,
with a warning; two starters racing are serialized by the write lock, so one of them
sees the other's row. The claim ends when the row says ``finished``, ``stopped`` or
``failed``, or when its process is gone.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy import Connection

from cowrieprocessor.backfill import lock, progress
from cowrieprocessor.backfill.errors import BackfillError
from cowrieprocessor.backfill.knobs import BackfillKnobs, KnobError
from cowrieprocessor.backfill.progress import progress_table, utcnow

log = logging.getLogger("cowrieprocessor.backfill")

PAUSE, STOP = "pause", "stop"
# run_state values: a job that holds one of ACTIVE is running (or was, until killed)
RUNNING, THROTTLED, PAUSED, STOPPING = "running", "throttled", "paused", "stopping"
STOPPED, FINISHED, FAILED = "stopped", "finished", "failed"
ACTIVE = (RUNNING, THROTTLED, PAUSED, STOPPING)
HEARTBEAT_FRESH_S = 60.0  # SQLite on another host: alive while it heartbeats this often
SET_SOURCE = "cowrie-db control set"


class NoJobRunning(BackfillError):
    """``cowrie-db control`` found no running job to steer (exit status 1)."""


class JobRunning(BackfillError):
    """Another job holds the database (exit status 1); this one changed nothing."""

    def __init__(self, holder: str) -> None:
        super().__init__(
            f"another backfill or clear is running on this database: {holder}; nothing "
            "was changed: wait for it to finish (`cowrie-db status`) or stop it "
            "(`cowrie-db control stop`), then rerun"
        )


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
    """Who runs the job: this process (its pid and when it started), on this host
    (``run_info``)."""
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "started": process_started(pid)}


def process_started(pid: int) -> str | None:
    """When process ``pid`` started, as a mark that a later process given the same pid
    does not share: the boot's id and the start time in clock ticks (Linux ``/proc``).
    None where there is no ``/proc`` (then a reused pid passes for the job's process)
    or no such process."""
    stat = _proc_stat(pid)
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    return None if stat is None else f"{boot}:{stat[19]}"  # field 22: the start time


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (field 3 first: the
    state), or None. The name is in parentheses and may hold spaces: count after it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


# --- the engine's side -----------------------------------------------------------------


def discard_commands(conn: Connection, job: str) -> Command:
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
        candidates = _claimants(conn)
        if conn.dialect.name == "postgresql":
            holder = lock.holder_pid(conn) if candidates else None
            alive = [
                c for c in candidates if holder is not None and c.info.get("backend") == holder
            ]
        else:
            alive = [c for c in candidates if _why_gone(c) is None]
        return alive[0] if alive else None
    finally:
        conn.rollback()


def _claimants(conn: Connection) -> list[RunningJob]:
    """The rows that say their job runs (it may have died since), the latest heartbeat
    first; none in a table of the first release."""
    if not progress.has_table(conn) or progress.lacks_run_columns(conn):
        return []
    t = progress_table
    rows = conn.execute(
        sa.select(
            t.c.job, t.c.run_state, t.c.run_info, t.c.heartbeat_at, t.c.control, t.c.control_seq
        )
        .where(t.c.run_state.in_(ACTIVE))
        .order_by(t.c.heartbeat_at.desc())
    ).all()
    return [
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


def _runs_here(job: RunningJob | None) -> bool:
    """Whether ``job``'s row names another process of this host that runs now: a holder
    that need not be given time to let go (its client is alive)."""
    if job is None or job.info.get("host") != socket.gethostname():
        return False
    return job.info.get("pid") != os.getpid() and _why_gone(job) is None


def _why_gone(job: RunningJob) -> str | None:
    """None while ``job``'s engine runs (SQLite's rule, see the module docstring); else
    why it is taken for gone."""
    pid, host = job.info.get("pid"), job.info.get("host")
    if host == socket.gethostname() and isinstance(pid, int):
        if pid == os.getpid():  # this process: the job runs while a walker here holds it
            return None if job.job in _HELD_HERE else "this process no longer runs it"
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return f"process {pid} is gone"
        except PermissionError:
            pass  # another user's process: it exists
        stat = _proc_stat(pid)
        if stat is not None and stat[0] in ("Z", "X"):
            return f"process {pid} is gone (not yet reaped)"
        started = job.info.get("started")
        if started is not None and started != process_started(pid):
            return f"process {pid} is another program now (its pid was reused)"
        return None
    if job.heartbeat_at is None:
        return f"no heartbeat from {host}"
    silent = (utcnow() - job.heartbeat_at).total_seconds()
    if silent < HEARTBEAT_FRESH_S:
        return None
    return f"no heartbeat from {host} for {silent:.0f} s"


# --- one job at a time: the claim ------------------------------------------------------

# The jobs a walker of this process holds now (SQLite): a row naming this process is a
# running job only while a walker here holds it; one left by a walker that ended
# without saying so (its last write failed) is taken over, as a dead process's is.
_HELD_HERE: set[str] = set()


class Claim(Protocol):
    """One job at a time on a database. The walker calls these, whatever the dialect."""

    backend: int | None  # PostgreSQL: the backend pid holding the lock (in ``run_info``)

    def attach(self, conn: Connection) -> None:
        """A new connection of the job's (raises :class:`JobRunning`)."""

    def take(self, conn: Connection) -> None:
        """First thing in the transaction that writes the job's row when it starts,
        before anything is written (raises :class:`JobRunning`)."""

    def detach(self, conn: Connection) -> None:
        """The job is done with ``conn`` (it closes it next)."""

    def release(self) -> None:
        """The run ended (its row says how by now)."""


class AdvisoryClaim:
    """PostgreSQL: the session advisory lock (:mod:`.lock`), taken on each connection."""

    def __init__(self, sleep: Callable[[float], None] = time.sleep) -> None:
        self.sleep = sleep
        self.backend: int | None = None

    def attach(self, conn: Connection) -> None:
        if not self._take(conn):
            job = running_job(conn)
            raise JobRunning(job.describe() if job is not None else lock.describe_holder(conn))
        self.backend = lock.backend_pid(conn)

    def _take(self, conn: Connection) -> bool:
        """The lock, at once; else, unless a process of this host that runs now holds
        it, after the grace a holder whose client just died needs to let go."""
        if lock.try_take(conn, self.sleep, grace=False):
            return True
        return not _runs_here(running_job(conn)) and lock.try_take(conn, self.sleep)

    def take(self, conn: Connection) -> None:
        pass  # the lock taken on attach is the claim

    def detach(self, conn: Connection) -> None:
        """Release the lock: it is per session, and pooled sessions live on."""
        if conn.invalidated:
            return  # a dead session holds no lock
        try:
            if conn.in_transaction():
                conn.rollback()
            lock.release(conn)
        except sa.exc.DBAPIError:
            pass  # a dead session holds no lock

    def release(self) -> None:
        pass


class RowClaim:
    """SQLite: the job's row in the progress table names its running process."""

    backend: int | None = None

    def __init__(self, job: str, *, dry_run: bool = False) -> None:
        self.job = job
        self.dry_run = dry_run  # a dry run writes nothing: it only looks
        self.held = False  # this claim counts its job in _HELD_HERE

    def attach(self, conn: Connection) -> None:
        pass

    def take(self, conn: Connection) -> None:
        """Refuse if another row names a job that runs; else mark the rows of jobs that
        are gone ``stopped`` and count this job as running here. The caller writes the
        job's row (``run_state`` running, this process) in the same transaction."""
        self.release()  # a start retried: the rows decide again
        gone = []
        for other in _claimants(conn):
            why = _why_gone(other)
            if why is None:
                raise JobRunning(other.describe())
            gone.append((other, why))
        if self.dry_run:
            return
        for other, why in gone:
            log.warning("taking over from %s, which did not end: %s", other.describe(), why)
            conn.execute(
                progress_table.update()
                .where(progress_table.c.job == other.job)
                .values(run_state=STOPPED)
            )
        _HELD_HERE.add(self.job)
        self.held = True

    def detach(self, conn: Connection) -> None:
        pass

    def release(self) -> None:
        if self.held:
            _HELD_HERE.discard(self.job)
            self.held = False


class WorkerClaim:
    """A worker of a job that holds the claim (:mod:`.workers`): the job's own
    connection holds it for all of its workers, which take nothing themselves."""

    backend: int | None = None

    def attach(self, conn: Connection) -> None:
        pass

    def take(self, conn: Connection) -> None:
        pass

    def detach(self, conn: Connection) -> None:
        pass

    def release(self) -> None:
        pass


def claim_for(
    dialect: str, job: str, *, dry_run: bool, sleep: Callable[[float], None] = time.sleep
) -> Claim:
    """The claim of ``job`` on a database of ``dialect``."""
    if dialect == "postgresql":
        return AdvisoryClaim(sleep)
    return RowClaim(job, dry_run=dry_run)


def refuse_if_running(conn: Connection) -> None:
    """Raise :class:`JobRunning` when a job runs on this database now: for a step that
    must not run beside one and is no job itself. Ends the read transaction."""
    job = running_job(conn)
    if conn.dialect.name == "postgresql" and not _runs_here(job):
        lock.wait_while_held(conn)  # the grace is for a holder whose client just died
        job = running_job(conn)
    if job is not None:
        raise JobRunning(job.describe())
    if conn.dialect.name == "postgresql" and lock.holder_pid(conn) is not None:
        holder = lock.describe_holder(conn)
        raise JobRunning(holder)
    conn.rollback()


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


ACK_POLL_S = 0.25  # how often the operator's side reads the row while it waits


def wait_for_ack(
    conn: Connection,
    command: str,
    sent: RunningJob,
    timeout: float,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> str | None:
    """After :func:`request`: wait until the engine shows it took ``command`` (its
    ``run_state``, or for ``set`` the sequence number it applied), at most ``timeout``
    seconds; what it shows, in a sentence for the operator, or None."""
    deadline = clock() + timeout
    while True:
        now = running_job(conn)
        if now is None or now.job != sent.job:
            if command == STOP:
                return "stopped; rerun the same command to resume"
            # it was running when the command was written: it may have taken it and
            # finished (a short walk after a resume) before this looked again
            return f"the job is no longer running (it ended after the {command} was sent)"
        if command == PAUSE and now.run_state == PAUSED:
            return "paused: no batch starts until `cowrie-db control resume`"
        if command == "resume" and now.run_state != PAUSED:
            return f"resumed: {now.run_state}"
        if command == STOP and now.run_state == STOPPING:
            return "stopping after the current batch; rerun the same command to resume"
        if command == "set" and int(now.info.get("control_seq_applied", 0)) > sent.control_seq:
            knobs = now.info.get("knobs", {})
            return "knobs in force: " + ", ".join(f"{k}={v}" for k, v in knobs.items())
        if clock() >= deadline:
            return None
        sleep(ACK_POLL_S)
