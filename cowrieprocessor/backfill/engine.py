"""The backfill engine: one implementation for the Alembic revision and the CLI.

It walks the table in key order, one range of rows at a time. For each range it
runs one set-based statement (resolve the canonical IP, join ``ip_inventory``, update
only the NULL snapshot columns of matched sessions) and saves its position in the
progress table, in one short transaction of its own. So:

* no row lock is held longer than one batch, and no table lock is taken;
* an interrupted run resumes after the last committed range, and ends with the same
  data as an uninterrupted one (the statement only fills NULLs from the inventory,
  so running a range twice is harmless);
* transient failures (lock timeout, deadlock, serialization failure, a lost
  connection, SQLite's "database is locked") are retried with exponential backoff; a
  range that hits ``statement_timeout`` is split in two; a failure that persists stops
  the run with :class:`BatchFailed`, naming the range and the cause.

After the walk, a catch-up pass walks the keys again: sessions that the loader
inserted into ranges already walked get their snapshots too. It looks only at sessions
without ``source_ip`` (every session the walk matched has one), so it reads the table
but resolves and writes next to nothing. Every session that exists without a snapshot
when the catch-up starts is covered; one inserted behind the catch-up itself is left to
the loader (or the next run). A run whose progress row says ``done`` is finished; the
next run starts a fresh walk (it changes only what still needs changing).

Range sizes (see :mod:`cowrieprocessor.backfill.knobs`): adaptive by default, starting
at 1,000 rows and steered so that a batch takes about ``batch_time``, capped at
``batch_size``; fixed at ``batch_size`` when that is set on its own. Measured on
PostgreSQL 15 (1.68M sessions, 2 cores), a row costs tens of microseconds to update,
so a fixed 20,000-row batch held its row locks for 1-2 s; docs/performance.md has the
figures behind the default.

Key order: ``session_id`` ranges, except for adaptive batches on SQLite, which walk
``rowid`` (the physical order): random session ids scatter every key range over the
whole file, so each SQLite commit would rewrite thousands of pages. A rowid position is
saved as ``#rowid:<rowid>:<session_id>`` and trusted only while that session still has
that rowid (VACUUM may renumber them); otherwise the phase restarts in ``session_id``
order, which is always safe since a range run twice changes nothing. A resumed phase
keeps the order it was started in.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from cowrieprocessor.backfill import progress, record, shape, sql
from cowrieprocessor.backfill.knobs import BackfillKnobs
from cowrieprocessor.backfill.progress import CATCHUP, DONE, WALK, JobState, Snapshot
from cowrieprocessor.backfill.shape import JsonTypes
from cowrieprocessor.db.engine import create_engine_from_url, is_sqlite_memory
from cowrieprocessor.errors import CowrieError
from cowrieprocessor.settings import mask_secrets

log = logging.getLogger("cowrieprocessor.backfill")

BACKFILL_JOB = "snapshot_backfill"
CLEAR_JOB = "snapshot_clear"  # the downgrade of 0003
CLEAR_ALL_JOB = "snapshot_clear_all"  # cowrie-db clear --all
ADVISORY_LOCK_KEY = 0x636F_7772_6965  # "cowrie": one backfill or clear at a time
ADVISORY_LOCK_WAIT_S = 5.0
ROWID_KEY_PREFIX = "#rowid:"
ADAPTIVE_FIRST_BATCH = 1_000  # rows: the first commit comes quickly on any server
ADAPTIVE_GROWTH = 2.0  # a batch is at most this many times the previous one
ADAPTIVE_SHRINK = 0.5  # ... and at least this fraction of it
CATCHUP_REACH = 10  # adaptive catch-up ranges may span this many times batch_size keys
STATEMENT_TIMEOUT = "statement timeout"
SPLIT_ON = frozenset({STATEMENT_TIMEOUT})
NONE: frozenset[str] = frozenset()

# PostgreSQL SQLSTATEs worth a retry, and what to call them in a log line.
PG_TRANSIENT = {
    "55P03": "lock timeout",
    "40P01": "deadlock",
    "40001": "serialization failure",
    "57014": STATEMENT_TIMEOUT,
    "57P01": "connection lost",
    "57P02": "connection lost",
    "57P03": "connection lost",
}


class BackfillError(CowrieError):
    """The backfill cannot run or cannot finish; the message says why."""


class BatchFailed(BackfillError):
    """A range failed for good. Everything committed before it stays."""

    def __init__(self, message: str, kind: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind


class BackfillInterrupted(BackfillError):
    """Stopped on request between two batches; a rerun resumes."""


@dataclass
class BatchCounts:
    candidates: int = 0
    no_ip: int = 0
    matched: int = 0
    updated: int = 0
    # sessions whose IP came from each of sql.IP_SOURCES (dry runs only)
    by_source: tuple[int, ...] = ()

    @property
    def not_in_inventory(self) -> int:
        return self.candidates - self.no_ip - self.matched


@dataclass
class BatchReport:
    """Handed to ``on_batch`` after each committed (or, in a dry run, counted) range."""

    job: str
    phase: str
    batch: int
    lo: str | None
    hi: str | None
    counts: BatchCounts
    seconds: float
    done: int
    total: int


@dataclass
class BackfillResult:
    job: str
    dry_run: bool
    sessions_total: int
    needing_at_start: int
    inventory_size: int
    rows_updated: int
    matched: int
    unmatched_no_ip: int
    unmatched_not_in_inventory: int
    batches: int
    failed_batches: int
    retries: int
    splits: int
    seconds: float
    resumed: bool
    batch_seconds: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.sessions_total / self.seconds if self.seconds > 0 else 0.0


def describe_range(lo: str | None, hi: str | None) -> str:
    return SESSION_ID_ORDER.describe(lo, hi)


class PositionLost(Exception):
    """A saved rowid no longer points at the session it was saved with (VACUUM)."""


class KeyOrder:
    """Ranges of ``session_id``: keys are the session ids themselves."""

    name = "session_id"
    column = "s.session_id"

    def owns(self, key: str) -> bool:
        """Whether a saved position was written by this order."""
        return not key.startswith(ROWID_KEY_PREFIX)

    def bound_after(self, conn: Connection, lo: str | None, offset: int) -> str | None:
        params: dict[str, Any] = {"offset": offset}
        if lo is not None:
            params["lo"] = lo
        value = conn.execute(sql.next_bound(lo is not None), params).scalar()
        return None if value is None else str(value)

    def param(self, key: str) -> Any:
        return key

    def show(self, key: str) -> str:
        return repr(key)

    def still_valid(self, conn: Connection, lo: str | None) -> bool:
        return True

    def describe(self, lo: str | None, hi: str | None) -> str:
        left = "(start" if lo is None else f"({self.show(lo)}"
        right = "end)" if hi is None else f"{self.show(hi)}]"
        return f"{self.name} range {left}, {right}"

    def params(self, lo: str | None, hi: str | None) -> dict[str, Any]:
        params = {}
        if lo is not None:
            params["lo"] = self.param(lo)
        if hi is not None:
            params["hi"] = self.param(hi)
        return params


class RowidOrder(KeyOrder):
    """SQLite: ranges of ``rowid``; a key is ``#rowid:<rowid>:<session_id>``."""

    name = "rowid"
    column = "s.rowid"

    def owns(self, key: str) -> bool:
        return self.decode(key) is not None

    @staticmethod
    def decode(key: str) -> tuple[int, str] | None:
        if not key.startswith(ROWID_KEY_PREFIX):
            return None
        number, sep, session_id = key[len(ROWID_KEY_PREFIX) :].partition(":")
        if not sep or not number.isdigit():
            return None
        return int(number), session_id

    def bound_after(self, conn: Connection, lo: str | None, offset: int) -> str | None:
        params: dict[str, Any] = {"offset": offset}
        if lo is not None:
            params["lo"] = self.param(lo)
        row = conn.execute(sql.next_rowid_bound(lo is not None), params).first()
        return None if row is None else f"{ROWID_KEY_PREFIX}{int(row[0])}:{row[1]}"

    def param(self, key: str) -> Any:
        decoded = self.decode(key)
        if decoded is None:
            raise ValueError(f"not a rowid position: {key!r}")
        return decoded[0]

    def show(self, key: str) -> str:
        return str(self.param(key))

    def still_valid(self, conn: Connection, lo: str | None) -> bool:
        if lo is None:
            return True
        decoded = self.decode(lo)
        if decoded is None:
            return False
        rowid, session_id = decoded
        return conn.execute(sql.ROWID_OF, {"sid": session_id}).scalar() == rowid


SESSION_ID_ORDER = KeyOrder()
ROWID_ORDER = RowidOrder()


class BatchSizer:
    """Rows per range: fixed at ``batch_size``, or steered toward ``batch_time``.

    After each committed range of ``n`` rows that took ``t`` seconds, the next range
    gets ``n * batch_time / t`` rows, at most doubled, at least halved, capped at
    ``batch_size`` (GitLab's batched background migrations steer the same way).
    """

    def __init__(self, knobs: BackfillKnobs) -> None:
        self.limit = knobs.batch_size
        self.target = knobs.batch_time / 1000 if knobs.adaptive else 0.0
        self.size = min(self.limit, ADAPTIVE_FIRST_BATCH) if self.target else self.limit
        self.batch_size = knobs.batch_size

    def start_phase(self, phase: str) -> None:
        """The catch-up pass reads ranges but writes next to nothing: when adaptive, its
        ranges are sized by time alone, up to ``CATCHUP_REACH`` times ``batch_size``."""
        reach = CATCHUP_REACH if self.target and phase == CATCHUP else 1
        self.limit = self.batch_size * reach
        self.size = min(self.size, self.limit)

    def observe(self, rows: int, seconds: float) -> None:
        if not self.target or rows <= 0:
            return
        factor = ADAPTIVE_GROWTH if seconds <= 0 else self.target / seconds
        factor = min(max(factor, ADAPTIVE_SHRINK), ADAPTIVE_GROWTH)
        self.size = max(1, min(self.limit, round(rows * factor)))

    def timed_out(self, rows: int) -> None:
        """A range of ``rows`` hit statement_timeout: never ask for that many again."""
        if self.target:
            self.size = max(1, min(self.size, rows // 2))


def classify(exc: BaseException, dialect: str) -> str | None:
    """Name a transient failure, or None when retrying cannot help."""
    if not isinstance(exc, DBAPIError):
        return None
    if exc.connection_invalidated:
        return "connection lost"
    if dialect == "postgresql":
        code = getattr(exc.orig, "pgcode", None)
        if code in PG_TRANSIENT:
            return PG_TRANSIENT[code]
        if code is not None and code.startswith("08"):
            return "connection lost"
        if code is None and isinstance(exc, sa.exc.OperationalError):
            return "connection lost"
        return None
    message = str(exc.orig).lower()
    if "database is locked" in message or "database table is locked" in message:
        return "database is locked"
    return None


@dataclass(frozen=True)
class Range:
    """One batch's range, as handed to the statement that processes it."""

    phase: str
    order: KeyOrder
    lo: str | None
    hi: str | None

    @property
    def has_lo(self) -> bool:
        return self.lo is not None

    @property
    def has_hi(self) -> bool:
        return self.hi is not None

    @property
    def params(self) -> dict[str, Any]:
        return self.order.params(self.lo, self.hi)

    @property
    def needs(self) -> str:
        """The catch-up looks only at sessions without source_ip (module docstring)."""
        return sql.CATCHUP_NEEDS if self.phase == CATCHUP else sql.NEEDS_SNAPSHOT


RunRange = Callable[[Connection, Range], BatchCounts]


class RangeWalker:
    """Walks the key space of ``session_summaries`` and runs one statement per range."""

    def __init__(
        self,
        engine: Engine,
        knobs: BackfillKnobs,
        *,
        job: str,
        phases: tuple[str, ...] = (WALK,),
        dry_run: bool = False,
        stop: threading.Event | None = None,
        on_batch: Callable[[BatchReport], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.engine = engine
        self.knobs = knobs
        self.job = job
        self.phases = phases
        self.dry_run = dry_run
        self.stop = stop or threading.Event()
        self.on_batch = on_batch
        self.sleep = sleep
        self.dialect = engine.dialect.name
        self.conn: Connection | None = None
        self.state = JobState(job=job)
        self.batch_seconds: list[float] = []
        self.sizer = BatchSizer(knobs)
        # Adaptive batches on SQLite walk the physical order (see the module docstring).
        self.fresh_order: KeyOrder = (
            ROWID_ORDER if self.dialect == "sqlite" and knobs.adaptive else SESSION_ID_ORDER
        )
        self.order: KeyOrder = self.fresh_order
        self._phase_total = 0
        self._phase_started = time.monotonic()
        self._phase_done_at_start = 0
        self._last_log = 0.0

    # -- connections ---------------------------------------------------------------

    def connection(self) -> Connection:
        if self.conn is None or self.conn.closed or self.conn.invalidated:
            if self.conn is not None:
                self.conn.close()
            self.conn = self.engine.connect()
            if self.dialect == "postgresql":
                self._take_advisory_lock(self.conn)
        return self.conn

    def _take_advisory_lock(self, conn: Connection) -> None:
        # A backend that was just terminated (our own, after a lost connection) can
        # hold the lock for a moment while it exits: allow it a few seconds.
        deadline = time.monotonic() + ADVISORY_LOCK_WAIT_S
        while True:
            got = conn.execute(
                sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": ADVISORY_LOCK_KEY}
            ).scalar()
            conn.commit()
            if got or time.monotonic() >= deadline:
                break
            self.sleep(0.2)
        if not got:
            holder = conn.execute(
                sa.text(
                    "SELECT a.pid, a.application_name FROM pg_locks l "
                    "JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.locktype = 'advisory' AND l.granted "
                    "AND l.objid = (:key & 4294967295)"
                ),
                {"key": ADVISORY_LOCK_KEY},
            ).first()
            conn.commit()
            who = f" (pid {holder[0]}, {holder[1]!r})" if holder else ""
            raise BackfillError(
                f"another backfill or clear is running on this database{who}; "
                "wait for it to finish (cowrie-db status) or stop it first"
            )

    def close(self) -> None:
        """Release the advisory lock (it is per session, and pooled sessions live on)."""
        if self.conn is None:
            return
        try:
            if self.dialect == "postgresql" and not self.conn.invalidated:
                if self.conn.in_transaction():
                    self.conn.rollback()
                self.conn.execute(
                    sa.text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_LOCK_KEY}
                )
                self.conn.commit()
        except DBAPIError:
            pass  # a dead session holds no lock
        finally:
            self.conn.close()
            self.conn = None

    def begin(self, conn: Connection) -> Any:
        """A batch transaction. SQLite takes the write lock up front (BEGIN IMMEDIATE)."""
        if self.dialect == "sqlite" and not self.dry_run:
            conn = conn.execution_options(sqlite_begin="IMMEDIATE")
        return conn.begin()

    # -- retries -------------------------------------------------------------------

    def retrying(
        self, what: str, fn: Callable[[Connection], Any], *, fail_fast: frozenset[str] = NONE
    ) -> Any:
        """Run ``fn`` (one transaction's worth of work), retrying transient failures.

        Failures whose kind is in ``fail_fast`` are raised at once (as BatchFailed with
        that kind) so that the caller can react, e.g. split a range that timed out.
        """
        attempt = 0
        while True:
            conn = self.connection()
            try:
                return fn(conn)
            except DBAPIError as exc:
                if conn.in_transaction():
                    conn.rollback()
                kind = classify(exc, self.dialect)
                if kind is None or kind in fail_fast or attempt >= self.knobs.max_retries:
                    cause = kind or type(exc.orig).__name__
                    detail = mask_secrets((str(exc.orig).strip().splitlines() or [""])[0])
                    raise BatchFailed(
                        f"{what} failed after {attempt + 1} attempt(s): {cause}: {detail}",
                        kind,
                    ) from exc
                attempt += 1
                self.state.retries += 1
                delay = min(0.2 * 2 ** (attempt - 1), 10.0) * (0.5 + random.random() / 2)
                log.warning(
                    "%s: %s, retry %d/%d in %.1f s",
                    what,
                    kind,
                    attempt,
                    self.knobs.max_retries,
                    delay,
                )
                if kind == "connection lost":
                    self.close()
                self.sleep(delay)

    # -- walking -------------------------------------------------------------------

    def bound_after(self, lo: str | None, offset: int) -> str | None:
        """The key ``offset`` places after ``lo`` (None: fewer keys remain)."""
        order = self.order

        def find(conn: Connection) -> str | None:
            value = order.bound_after(conn, lo, offset)
            conn.commit()
            return value

        what = f"finding the range after {order.show(lo) if lo is not None else 'the start'}"
        return self.retrying(what, find)  # type: ignore[no-any-return]

    def count_range(self, lo: str | None, hi: str | None) -> int:
        order = self.order

        def count(conn: Connection) -> int:
            n = conn.execute(
                sql.count_range(lo is not None, hi is not None, order.column),
                order.params(lo, hi),
            ).scalar_one()
            conn.commit()
            return int(n)

        return self.retrying(f"counting {order.describe(lo, hi)}", count)  # type: ignore[no-any-return]

    def walk(self, phase: str, run_range: RunRange) -> None:
        """Walk every range of ``phase`` from the saved position to the end."""
        self._start_phase(phase)
        lo = self.state.last_key
        if lo is None:
            self.order = self.fresh_order
        elif ROWID_ORDER.owns(lo) and self.dialect == "sqlite":
            self.order = ROWID_ORDER  # resume in the order the phase was started in
        else:
            self.order = SESSION_ID_ORDER
        while True:
            if self.stop.is_set():
                raise BackfillInterrupted(
                    f"stopped after {self.order.describe(None, lo)}; rerun to resume"
                )
            size = self.sizer.size
            hi = self.bound_after(lo, size - 1)
            try:
                self._process(phase, lo, hi, size if hi is not None else None, run_range)
            except PositionLost:
                log.warning(
                    "%s %s: the rowid position %s no longer holds its session (the file "
                    "was vacuumed?): restarting the %s in session_id order",
                    self.job,
                    phase,
                    self.order.show(lo) if lo is not None else "(start)",
                    phase,
                )
                self.order = SESSION_ID_ORDER
                self.state.sessions_walked = 0
                lo = None
                continue
            if hi is None:
                return
            lo = hi
            if self.knobs.pause_ms:
                self.sleep(self.knobs.pause_ms / 1000)

    def undo_recorded(self) -> None:
        """Undo the rollback record in batches sized like the walk's (:class:`BatchSizer`)."""
        self._start_phase(WALK)
        while True:
            if self.stop.is_set():
                raise BackfillInterrupted("stopped between two batches; rerun to resume")
            started = time.monotonic()

            size = self.sizer.size

            def attempt(conn: Connection, size: int = size) -> tuple[int, int, int] | None:
                with self.begin(conn):
                    undone = record.undo_next(conn, size)
                    if undone is not None:
                        self.state.batches += 1
                        self.state.sessions_walked += undone[1]
                        self.state.rows_updated += undone[2]
                        progress.save(conn, self.state)
                return undone

            before = _copy_state(self.state)
            try:
                undone = self.retrying(f"{self.job} batch {self.state.batches + 1}", attempt)
            except BaseException:
                self.state = before
                raise
            if undone is None:
                return
            record_id, entries, changed = undone
            seconds = time.monotonic() - started
            self.batch_seconds.append(seconds)
            self.sizer.observe(entries, seconds)
            where = f"record {record_id}"
            self._report(WALK, where, where, BatchCounts(updated=changed), seconds, entries)
            if self.knobs.pause_ms:
                self.sleep(self.knobs.pause_ms / 1000)

    def _process(
        self,
        phase: str,
        lo: str | None,
        hi: str | None,
        size: int | None,
        run_range: RunRange,
    ) -> None:
        pending: list[tuple[str | None, str | None, int | None]] = [(lo, hi, size)]
        while pending:
            r_lo, r_hi, r_size = pending.pop(0)
            try:
                self._commit_range(phase, r_lo, r_hi, r_size, run_range)
            except BatchFailed as exc:
                if exc.kind != STATEMENT_TIMEOUT:
                    raise
                if r_size is None:
                    r_size = self.count_range(r_lo, r_hi)
                if r_size <= 1:
                    raise
                self.sizer.timed_out(r_size)
                half = r_size // 2
                mid = self.bound_after(r_lo, half - 1)
                if mid is None or mid == r_hi:
                    raise
                self.state.splits += 1
                log.warning(
                    "%s hit statement_timeout (%d ms): splitting it in two",
                    self.order.describe(r_lo, r_hi),
                    self.knobs.statement_timeout,
                )
                pending[0:0] = [(r_lo, mid, half), (mid, r_hi, r_size - half)]

    def _commit_range(
        self,
        phase: str,
        lo: str | None,
        hi: str | None,
        size: int | None,
        run_range: RunRange,
    ) -> None:
        started = time.monotonic()
        order = self.order
        what = f"{self.job} {phase} batch {self.state.batches + 1}, {order.describe(lo, hi)}"
        batch = Range(phase, order, lo, hi)

        def attempt(conn: Connection) -> BatchCounts:
            with self.begin(conn):
                if not order.still_valid(conn, lo):
                    raise PositionLost(what)
                self._set_timeouts(conn)
                counts = run_range(conn, batch)
                if not self.dry_run:
                    self._advance(phase, hi, size, counts)
                    progress.save(conn, self.state)
            return counts

        before = _copy_state(self.state)
        try:
            counts = self.retrying(what, attempt, fail_fast=SPLIT_ON)
        except BaseException:
            self.state = before  # the saved row was rolled back with the batch
            raise
        if self.dry_run:
            self._advance(phase, hi, size, counts)
        seconds = time.monotonic() - started
        self.batch_seconds.append(seconds)
        if size is not None:
            self.sizer.observe(size, seconds)
        self._report(phase, lo, hi, counts, seconds, size)

    def _advance(self, phase: str, hi: str | None, size: int | None, c: BatchCounts) -> None:
        s = self.state
        s.batches += 1
        s.rows_updated += c.updated
        s.sessions_walked = s.sessions_walked + size if size is not None else self._phase_total
        # The catch-up pass sees again every session still lacking a snapshot: sessions
        # it matches are new ones, and its unmatched counts replace the walk's.
        s.matched += c.matched if phase == WALK else c.updated
        s.unmatched_no_ip += c.no_ip
        s.unmatched_not_in_inventory += c.not_in_inventory
        s.last_key = hi
        if hi is None:  # the last range of the phase: move on, atomically with it
            following = self.phases[self.phases.index(phase) + 1 :]
            s.phase = following[0] if following else DONE
            s.sessions_walked = 0
            if s.phase == CATCHUP:
                s.unmatched_no_ip = s.unmatched_not_in_inventory = 0
            if s.phase == DONE:
                s.finished_at = progress.utcnow()

    def _set_timeouts(self, conn: Connection) -> None:
        if self.dialect == "postgresql":
            conn.execute(
                sql.PG_SET_TIMEOUTS,
                {
                    "lock_timeout": str(self.knobs.lock_timeout),
                    "statement_timeout": str(self.knobs.statement_timeout),
                },
            )

    # -- reporting -----------------------------------------------------------------

    def _start_phase(self, phase: str) -> None:
        self.sizer.start_phase(phase)
        self._phase_total = self.state.sessions_total
        self._phase_started = time.monotonic()
        self._phase_done_at_start = self.state.sessions_walked
        self._last_log = time.monotonic()

    def snapshot(self, phase: str, *, complete: bool = False) -> Snapshot:
        """Progress within ``phase``; ``complete`` once its last range has committed."""
        total = self._phase_total
        done = total if complete or phase == DONE else min(self.state.sessions_walked, total)
        elapsed = max(time.monotonic() - self._phase_started, 1e-9)
        rate = (done - self._phase_done_at_start) / elapsed
        eta = (total - done) / rate if rate > 0 else None
        return Snapshot(
            job=self.job,
            phase=phase,
            batch=self.state.batches,
            done=done,
            total=total,
            percent=round(100.0 * done / total, 2) if total else 100.0,
            rate=round(rate, 1),
            eta_seconds=None if eta is None else round(eta, 1),
            started_at=self.state.started_at.isoformat(),
            updated_at=progress.utcnow().isoformat(),
            rows_updated=self.state.rows_updated,
            dry_run=self.dry_run,
        )

    def _report(
        self,
        phase: str,
        lo: str | None,
        hi: str | None,
        counts: BatchCounts,
        seconds: float,
        size: int | None = None,
    ) -> None:
        snap = self.snapshot(phase, complete=hi is None)
        if self.knobs.status_file is not None:
            progress.write_status_file(self.knobs.status_file, snap)
        if self.on_batch is not None:
            self.on_batch(
                BatchReport(
                    self.job,
                    phase,
                    self.state.batches,
                    lo,
                    hi,
                    counts,
                    seconds,
                    snap.done,
                    snap.total,
                )
            )
        now = time.monotonic()
        if now - self._last_log >= self.knobs.log_interval / 1000 or hi is None:
            self._last_log = now
            eta = "?" if snap.eta_seconds is None else f"{snap.eta_seconds:.0f} s"
            log.info(
                "%s %s: %d/%d sessions (%.1f%%), %.0f rows/s, ETA %s, %d updated; "
                "batch %d: %s in %.3f s",
                self.job,
                phase,
                snap.done,
                snap.total,
                snap.percent,
                snap.rate,
                eta,
                self.state.rows_updated,
                self.state.batches,
                "the last range" if size is None else f"{size} rows",
                seconds,
            )


def _copy_state(state: JobState) -> JobState:
    return JobState(**state.as_row())


# --- the two jobs ---------------------------------------------------------------------


def _backfill_range(dialect: str, dry_run: bool, json: JsonTypes, record: bool) -> RunRange:
    """The statement(s) of one backfill range, rendered for this database's JSON types."""
    sources = range(1, len(sql.IP_SOURCES) + 1)
    job = {"job": BACKFILL_JOB}

    def run_pg(conn: Connection, r: Range) -> BatchCounts:
        if dry_run:
            row = conn.execute(sql.pg_dry_run(json, r.has_lo, r.has_hi, r.needs), r.params).one()
            by_source = tuple(int(row._mapping[f"src_{n}"]) for n in sources)
        else:
            stmt = sql.pg_backfill(json, r.has_lo, r.has_hi, r.needs, record=record)
            row = conn.execute(stmt, {**r.params, **job} if record else r.params).one()
            by_source = ()
        return BatchCounts(
            int(row.candidates), int(row.no_ip), int(row.matched), int(row.updated), by_source
        )

    def run_sqlite(conn: Connection, r: Range) -> BatchCounts:
        conn.execute(sql.SQLITE_BATCH_TABLE)
        conn.execute(sql.SQLITE_BATCH_CLEAR)
        conn.execute(sql.sqlite_resolve(r.has_lo, r.has_hi, r.order.column, r.needs), r.params)
        row = conn.execute(sql.SQLITE_COUNTS).one()
        if dry_run:
            updated = int(conn.execute(sql.SQLITE_WOULD_UPDATE).scalar_one())
        else:
            updated = conn.execute(sql.SQLITE_UPDATE).rowcount
            if record and updated:
                conn.execute(sql.SQLITE_RECORD, job)
        conn.execute(sql.SQLITE_BATCH_CLEAR)
        by_source = tuple(int(row._mapping[f"src_{n}"]) for n in sources)
        return BatchCounts(
            int(row.candidates), int(row.no_ip), int(row.matched), updated, by_source
        )

    return run_pg if dialect == "postgresql" else run_sqlite


def dry_run_counts(conn: Connection, hi: str | None = None) -> BatchCounts:
    """The backfill's counts over ``session_id`` range (start, ``hi``] (the whole table
    when ``hi`` is None), written nowhere: what ``check`` and ``verify`` report."""
    json = shape.detect(conn)
    run = _backfill_range(conn.dialect.name, True, json, False)
    return run(conn, Range(WALK, SESSION_ID_ORDER, None, hi))


def _clear_range(conn: Connection, r: Range) -> BatchCounts:
    updated = conn.execute(
        sql.clear_snapshots(r.has_lo, r.has_hi, r.order.column), r.params
    ).rowcount
    return BatchCounts(updated=updated)


def _counts(conn: Connection) -> tuple[int, int, int]:
    total = int(conn.execute(sql.COUNT_SESSIONS).scalar_one())
    needy = int(conn.execute(sql.COUNT_NEEDY).scalar_one())
    inventory = int(conn.execute(sql.COUNT_INVENTORY).scalar_one())
    conn.commit()
    return total, needy, inventory


def _json_types(conn: Connection) -> JsonTypes:
    found = shape.detect(conn)
    conn.rollback()
    return found


def _ensure_record(conn: Connection) -> None:
    """Create the rollback record; a database backfilled before it existed (a progress
    row of the backfill, no record) gets a marker row that makes a downgrade clear all."""
    with conn.begin():
        if record.exists(conn):
            return
        backfilled_before = progress.load(conn, BACKFILL_JOB) is not None
        record.ensure_table(conn)
        if backfilled_before:
            record.mark_incomplete(conn)


def _prepare(walker: RangeWalker, fresh_job_to_delete: str | None = None) -> bool:
    """Load or start the job's state. Returns True when resuming an unfinished run."""

    def setup(conn: Connection) -> JobState | None:
        with conn.begin():
            progress.ensure_table(conn)
            if fresh_job_to_delete:
                progress.delete(conn, fresh_job_to_delete)
            return progress.load(conn, walker.job)

    if walker.dry_run:

        def peek(conn: Connection) -> JobState | None:
            state = progress.load(conn, walker.job)
            conn.commit()
            return state

        saved = walker.retrying("reading the progress table", peek)
    else:
        saved = walker.retrying("preparing the progress table", setup)
    if saved is not None and saved.phase != DONE and not walker.dry_run:
        walker.state = saved
        return True
    walker.state = JobState(job=walker.job)
    return False


def run_backfill(
    engine: Engine,
    knobs: BackfillKnobs,
    *,
    dry_run: bool = False,
    stop: threading.Event | None = None,
    on_batch: Callable[[BatchReport], None] | None = None,
    record: bool = True,
) -> BackfillResult:
    """Fill the five snapshot columns of every session that lacks them. See module doc.

    ``record=False`` leaves out the rollback record (:mod:`.record`); only the
    benchmarks use it, to measure what the record costs.
    Raises :class:`BatchFailed` (a range failed for good), :class:`BackfillInterrupted`
    (``stop`` was set), :class:`~cowrieprocessor.errors.IncompatibleSchema` (a JSON
    column of a type the backfill cannot read).
    """
    # A dry run walks once: without writes, a catch-up pass would only count twice.
    phases = (WALK,) if dry_run else (WALK, CATCHUP)
    walker = RangeWalker(
        engine,
        knobs,
        job=BACKFILL_JOB,
        phases=phases,
        dry_run=dry_run,
        stop=stop,
        on_batch=on_batch,
    )
    started = time.monotonic()
    try:
        json = walker.retrying("reading the JSON columns' types", _json_types)
        if record and not dry_run:
            walker.retrying("preparing the rollback record", _ensure_record)
        resumed = _prepare(walker)
        total, needy, inventory = walker.retrying("counting sessions", _counts)
        walker.state.sessions_total = total
        log.info(
            "%sbackfill: %d sessions, %d need snapshots, %d IPs in inventory; %s%s",
            "DRY RUN (no changes) - " if dry_run else "",
            total,
            needy,
            inventory,
            describe_sizing(knobs, walker.fresh_order),
            f"; resuming {walker.state.phase} after {walker.state.last_key!r}" if resumed else "",
        )
        if walker.dialect == "postgresql":
            log.info("JSON columns: %s", json.describe())
        run_range = _backfill_range(walker.dialect, dry_run, json, record)
        for phase in phases:
            if walker.state.phase == phase:
                walker.walk(phase, run_range)
        if knobs.status_file is not None:
            progress.write_status_file(knobs.status_file, walker.snapshot(DONE))
    finally:
        walker.close()
    s = walker.state
    result = BackfillResult(
        job=BACKFILL_JOB,
        dry_run=dry_run,
        sessions_total=total,
        needing_at_start=needy,
        inventory_size=inventory,
        rows_updated=s.rows_updated,
        matched=s.matched,
        unmatched_no_ip=s.unmatched_no_ip,
        unmatched_not_in_inventory=s.unmatched_not_in_inventory,
        batches=s.batches,
        failed_batches=0,
        retries=s.retries,
        splits=s.splits,
        seconds=time.monotonic() - started,
        resumed=resumed,
        batch_seconds=walker.batch_seconds,
    )
    log_summary(result)
    return result


def describe_sizing(knobs: BackfillKnobs, order: KeyOrder) -> str:
    if not knobs.adaptive:
        return f"batch_size={knobs.batch_size} ({order.name} ranges)"
    return (
        f"adaptive batches of {order.name} ranges: {min(knobs.batch_size, ADAPTIVE_FIRST_BATCH)} "
        f"rows first, then sized toward batch_time={knobs.batch_time} ms, at most "
        f"batch_size={knobs.batch_size}"
    )


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of ``values`` (0.0 when empty)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(fraction * len(ordered))))
    return ordered[rank - 1]


def log_summary(r: BackfillResult) -> None:
    verb = "would update" if r.dry_run else "updated"
    log.info("=" * 60)
    log.info(
        "Backfill %s: %s %d sessions of %d",
        "dry run complete" if r.dry_run else "complete",
        verb,
        r.rows_updated,
        r.sessions_total,
    )
    if not r.dry_run:
        log.info(
            "Matched in inventory: %d; unmatched: %d (no canonical IP: %d, IP not in "
            "inventory: %d)",
            r.matched,
            r.unmatched_no_ip + r.unmatched_not_in_inventory,
            r.unmatched_no_ip,
            r.unmatched_not_in_inventory,
        )
    log.info(
        "Batches: %d, failed batches: %d, retries: %d, ranges split: %d",
        r.batches,
        r.failed_batches,
        r.retries,
        r.splits,
    )
    log.info(
        "Batch time: p50 %.3f s, p95 %.3f s, max %.3f s",
        percentile(r.batch_seconds, 0.5),
        percentile(r.batch_seconds, 0.95),
        max(r.batch_seconds, default=0.0),
    )
    log.info("Total time: %.1f s, average rate: %.0f sessions/s", r.seconds, r.rate)
    log.info("=" * 60)


@dataclass
class ClearResult:
    rows_cleared: int
    batches: int
    seconds: float


def clear_snapshots(
    engine: Engine,
    knobs: BackfillKnobs,
    *,
    stop: threading.Event | None = None,
    job: str = CLEAR_ALL_JOB,
    drop_progress_table: bool = False,
) -> ClearResult:
    """NULL the five snapshot columns of every session, whoever wrote them, batch by batch.

    ``cowrie-db clear --all`` (the runbook's "data corruption" case), and the downgrade
    of a database backfilled before the rollback record existed. The backfill's progress
    row is deleted first, so a later backfill starts afresh even if this is interrupted;
    the clear's own row lets a rerun resume. At the end the rollback record is emptied:
    nothing it names is left. Raises like :func:`run_backfill`.
    """
    walker = RangeWalker(engine, knobs, job=job, stop=stop)
    started = time.monotonic()
    try:
        resumed = _prepare(walker, fresh_job_to_delete=BACKFILL_JOB)
        total, _needy, _inv = walker.retrying("counting sessions", _counts)
        walker.state.sessions_total = total
        log.info(
            "clearing all snapshot values: %d sessions; %s%s",
            total,
            describe_sizing(knobs, walker.fresh_order),
            f"; resuming after {walker.state.last_key!r}" if resumed else "",
        )
        if walker.state.phase == WALK:
            walker.walk(WALK, _clear_range)
        walker.retrying("emptying the rollback record", _forget_record)
        if drop_progress_table:
            walker.retrying("dropping the progress table", _drop_progress)
    finally:
        walker.close()
    return _log_cleared(walker, started)


def undo_backfill(
    engine: Engine, knobs: BackfillKnobs, *, stop: threading.Event | None = None
) -> ClearResult:
    """The downgrade of 0003: NULL exactly the values the backfill wrote (:mod:`.record`).

    Values that were there before the upgrade, or that the loader wrote since, survive.
    A database backfilled before the record existed is cleared whole, with a warning.
    The progress and record tables are dropped at the end. Resumable; raises like
    :func:`run_backfill`.
    """
    with engine.connect() as conn:
        exact = record.exists(conn) and not record.is_incomplete(conn)
        conn.rollback()
    if not exact:
        log.warning(
            "no complete rollback record (this database was backfilled before the record "
            "existed): the downgrade cannot tell the backfill's values from others and "
            "clears all five snapshot columns in every session, as before"
        )
        return clear_snapshots(engine, knobs, stop=stop, job=CLEAR_JOB, drop_progress_table=True)
    walker = RangeWalker(engine, knobs, job=CLEAR_JOB, stop=stop)
    started = time.monotonic()
    try:
        resumed = _prepare(walker, fresh_job_to_delete=BACKFILL_JOB)
        rows, sessions = walker.retrying("reading the rollback record", _pending_record)
        walker.state.sessions_total = walker.state.sessions_walked + sessions
        log.info(
            "undoing the backfill: %d recorded sessions in %d batches%s",
            sessions,
            rows,
            " (resuming)" if resumed else "",
        )
        walker.undo_recorded()
        walker.retrying("dropping the progress and record tables", _drop_progress)
    finally:
        walker.close()
    return _log_cleared(walker, started)


def _log_cleared(walker: RangeWalker, started: float) -> ClearResult:
    seconds = time.monotonic() - started
    log.info(
        "Cleared snapshot values in %d rows, %d batches, %.1f s",
        walker.state.rows_updated,
        walker.state.batches,
        seconds,
    )
    return ClearResult(walker.state.rows_updated, walker.state.batches, seconds)


def _pending_record(conn: Connection) -> tuple[int, int]:
    found = record.pending(conn)
    conn.rollback()
    return found


def _forget_record(conn: Connection) -> None:
    with conn.begin():
        record.forget_all(conn)


def refill_after_interrupted_clear(engine: Engine, knobs: BackfillKnobs) -> bool:
    """Finish the job of an upgrade whose way back was interrupted half way.

    A downgrade of 0003 that stops part way (Ctrl-C, ``kill -9``) leaves the database
    stamped at 0003 with some ranges cleared and the clear job's progress row behind.
    ``alembic upgrade head`` then runs only 0004; without this, head would be reached
    with those snapshots missing. The clear row is deleted only after the refill has
    finished, so a refill that is itself interrupted is resumed by the next upgrade.
    Returns True when it refilled.
    """

    def unfinished_clear(conn: Connection) -> JobState | None:
        state = progress.load(conn, CLEAR_JOB)
        conn.rollback()
        return state

    with engine.connect() as conn:
        if unfinished_clear(conn) is None:
            return False
    log.warning(
        "an interrupted downgrade left snapshot columns partly cleared: refilling them "
        "before going on (to finish the downgrade instead, run `alembic downgrade "
        "0002_snapshot_columns`)"
    )
    run_backfill(engine, knobs)
    with engine.begin() as conn:
        progress.delete(conn, CLEAR_JOB)
    return True


def _drop_progress(conn: Connection) -> None:
    with conn.begin():
        progress.drop_table(conn)
        record.drop_table(conn)


# --- from inside an Alembic revision -------------------------------------------------


def engine_for_bind(bind: Connection, knobs: BackfillKnobs) -> Engine:
    """A separate engine on the migration's database, for the batches' own connections.

    Batches run on their own connections so that a lost connection can be replaced
    and retried; Alembic's connection, idle meanwhile, stamps the revision at the end.
    """
    url = bind.engine.url
    if is_sqlite_memory(url):
        raise BackfillError(
            "the backfill needs a database file or server; an in-memory SQLite "
            "database cannot be shared with the batch connections"
        )
    return create_engine_from_url(
        url,
        application_name="cowrie-backfill",
        sqlite_busy_timeout_ms=knobs.lock_timeout,
        pool_size=1,
        max_overflow=1,
    )
