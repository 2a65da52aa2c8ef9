"""The range walker: one committed transaction per range of keys, with its progress.

It walks ``session_summaries`` in key order (:mod:`.keys`), one range at a time, sized
by :mod:`.sizing`. For each range it runs the job's statement and saves its position
in the progress table in the same short transaction. So no row lock is held longer
than one batch, no table lock is taken, and an interrupted run resumes after the last
committed range. Transient failures (:mod:`.errors`) are retried with exponential
backoff; a range that hits ``statement_timeout`` is split in two; a failure that
persists stops the run with :class:`~.errors.BatchFailed`, naming the range and the
cause. One job runs at a time on a database (its claim, :class:`~.control.Claim`:
PostgreSQL's advisory lock, SQLite's row in the progress table). When the run ends, its
row and the status file say how: ``finished``, ``stopped`` or ``failed``.

Why one module of this size: the walker is one class whose methods share the walk's
state (position, sizer, connection, counters); everything that does not need that
state (key orders, sizing, failure kinds, the lock, the progress model) has a module of
its own.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from cowrieprocessor.backfill import control, progress, record, sql
from cowrieprocessor.backfill.errors import (
    BackfillInterrupted,
    BatchFailed,
    classify,
)
from cowrieprocessor.backfill.governor import Governor
from cowrieprocessor.backfill.keys import (
    ROWID_ORDER,
    SESSION_ID_ORDER,
    KeyListOrder,
    KeyOrder,
    PositionLost,
    Range,
    catchup_keys,
)
from cowrieprocessor.backfill.knobs import BackfillKnobs
from cowrieprocessor.backfill.progress import CATCHUP, DONE, WALK, JobState, Progress
from cowrieprocessor.backfill.sizing import BatchSizer
from cowrieprocessor.settings import mask_secrets

log = logging.getLogger("cowrieprocessor.backfill")
# The catch-up lists the sessions it looks at again when there are at most this many
# (about 60 bytes each in memory); more, and it walks every range of the table instead.
CATCHUP_LIST_MAX = 200_000


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
    progress: Progress

    @property
    def done(self) -> int:
        return self.progress.done

    @property
    def total(self) -> int:
        return self.progress.total


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
        # A partitioned session_summaries (PostgreSQL): its leaves, walked one after the
        # other, each with its own ranges (:mod:`cowrieprocessor.db.partitions`); the
        # leaf after the one being walked (None: the last).
        self.leaves: list[str] | None = None
        self._next_leaf: str | None = None
        self._phase_total = 0
        self._phase_started = time.monotonic()
        self._phase_done_at_start = 0
        self._last_log = 0.0
        self.phase_now = phases[0]
        # sessions lacking a snapshot column, as this run's walk found them
        self.walk_candidates = 0
        self.governor = Governor(self)
        # one job at a time: taken when the run starts (:meth:`take_claim`)
        self.claim = control.claim_for(self.dialect, job, dry_run=dry_run, sleep=sleep)
        self.claimed = False

    def apply_knobs(self, knobs: BackfillKnobs) -> None:
        """Knobs changed while running (``cowrie-db control set``): from the next batch."""
        self.knobs = knobs
        self.sizer.retune(knobs)

    # -- connections ---------------------------------------------------------------

    def connection(self) -> Connection:
        if self.conn is None or self.conn.closed or self.conn.invalidated:
            if self.conn is not None:
                self._drop_connection()
            conn = self.engine.connect()
            try:
                self.claim.attach(conn)  # PostgreSQL: the advisory lock, per session
            except BaseException:
                conn.close()
                raise
            self.conn = conn
            self.governor.backend = self.claim.backend
        return self.conn

    def take_claim(self, conn: Connection) -> None:
        """The run starts: first thing in the transaction that writes its row (raises
        :class:`~.control.JobRunning` while another job runs, before any write)."""
        self.claim.take(conn)
        self.claimed = True

    def _drop_connection(self) -> None:
        if self.conn is not None:
            try:
                self.claim.detach(self.conn)
            finally:
                self.conn.close()
                self.conn = None

    def __enter__(self) -> RangeWalker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(exc)

    def close(self, error: BaseException | None = None) -> None:
        """The run ended, with ``error`` or not: say how in the progress row and in the
        status file (``finished``, ``stopped`` or ``failed``), release the claim, close
        the connection. A run that never got its claim (refused) writes neither: the
        row and the file are the running job's."""
        if error is None:
            ended, detail = control.FINISHED, ""
        elif isinstance(error, BackfillInterrupted | KeyboardInterrupt):
            ended, detail = control.STOPPED, ""
        else:
            ended = control.FAILED
            detail = mask_secrets((str(error).strip().splitlines() or [type(error).__name__])[0])
        try:
            conn = self.conn
            usable = conn is not None and not conn.closed and not conn.invalidated
            try:
                self.governor.finish(conn if usable and self.claimed else None, ended, detail)
            except DBAPIError as exc:
                if error is None:
                    raise
                # the row cannot be written now (e.g. SQLite still locked by the writer
                # that failed the run): the run's own error is what the operator must see
                log.warning("could not record in the progress row how the run ended: %s", exc)
            if self.claimed:
                try:
                    self.write_status(self.progress(DONE if error is None else self.phase_now))
                except OSError as exc:  # must not hide how the run ended
                    log.warning("could not rewrite the status file: %s", exc)
        finally:
            try:
                self._drop_connection()
            finally:
                self.claim.release()

    def begin(self, conn: Connection) -> Any:
        """A batch transaction. SQLite takes the write lock up front (BEGIN IMMEDIATE)."""
        if self.dialect == "sqlite" and not self.dry_run:
            conn = conn.execution_options(sqlite_begin="IMMEDIATE")
        return conn.begin()

    # -- retries -------------------------------------------------------------------

    def retrying(
        self, what: str, fn: Callable[[Connection], Any], *, split_on_timeout: bool = False
    ) -> Any:
        """Run ``fn`` (one transaction's worth of work), retrying transient failures.

        With ``split_on_timeout``, a statement timeout is raised at once (as BatchFailed
        with that kind) so that the caller can split the range instead.
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
                split = split_on_timeout and kind is not None and kind.splits_the_range
                if kind is None or split or attempt >= self.knobs.max_retries:
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
                if kind.needs_a_new_connection:
                    self._drop_connection()
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
            n = order.count(conn, lo, hi)
            conn.commit()
            return n

        return self.retrying(f"counting {order.describe(lo, hi)}", count)  # type: ignore[no-any-return]

    def walk(self, phase: str, run_range: RunRange) -> None:
        """Walk every range of ``phase`` from the saved position to the end: of the
        table, or of each leaf in turn from the saved one when it is partitioned."""
        self._start_phase(phase)
        if not self.leaves:
            if self.state.leaf is not None:
                log.warning(
                    "%s %s: the saved position is in partition %s, but session_summaries "
                    "is not partitioned now: restarting the %s from the start",
                    self.job,
                    phase,
                    self.state.leaf,
                    phase,
                )
                self.state.leaf = self.state.last_key = None
            self._next_leaf = None
            self._walk_table(phase, run_range, None)
            return
        first = self._resume_leaf(phase)
        for n in range(first, len(self.leaves)):
            leaf = self.leaves[n]
            if self.state.leaf != leaf:
                self.state.leaf, self.state.last_key = leaf, None
            self._next_leaf = self.leaves[n + 1] if n + 1 < len(self.leaves) else None
            self._walk_table(phase, run_range, leaf)

    def _resume_leaf(self, phase: str) -> int:
        """The index of the leaf to start in: the saved one, else the first after it in
        name order (it was detached or dropped since), else the first. ``leaves`` is
        not empty."""
        leaves = self.leaves or []
        saved = self.state.leaf
        if saved is None:
            if self.state.last_key is not None:
                log.warning(
                    "%s %s: the saved position %r is in session_summaries as a whole, "
                    "which is partitioned now: restarting the %s from its first partition",
                    self.job,
                    phase,
                    self.state.last_key,
                    phase,
                )
                self.state.last_key = None
            return 0
        if saved in leaves:
            return leaves.index(saved)
        # none after it: the last one again, whose last range moves the phase on (a
        # range walked twice changes nothing)
        following = min(bisect_right(leaves, saved), len(leaves) - 1)
        log.warning(
            "%s %s: partition %s, where the run stopped, is gone: going on with %s",
            self.job,
            phase,
            saved,
            leaves[following],
        )
        self.state.last_key = None
        return following

    def _walk_table(self, phase: str, run_range: RunRange, leaf: str | None) -> None:
        """Walk the ranges of one table (``leaf``, or session_summaries when None) from
        the saved position to its end."""
        lo = self.state.last_key
        if lo is None:
            order = self.fresh_order
        elif ROWID_ORDER.owns(lo) and self.dialect == "sqlite":
            order = ROWID_ORDER  # resume in the order the phase was started in
        else:
            order = SESSION_ID_ORDER
        self.order = order if leaf is None else order.in_table(leaf)
        if phase == CATCHUP and self.dialect == "postgresql" and not self.dry_run:
            self.order = self._catchup_list(lo) or self.order
        while True:
            self.governor.before_batch()
            if self.stop.is_set():
                where = "" if leaf is None else f" of partition {leaf}"
                raise BackfillInterrupted(
                    f"stopped after {self.order.describe(None, lo)}{where}; rerun to resume"
                )
            size = self.sizer.size
            hi = self.bound_after(lo, size - 1)
            # the last range of a leaf that is not the last: its exact size, for progress
            last_size = self.count_range(lo, None) if hi is None and self._next_leaf else None
            try:
                self._process(phase, lo, hi, size if hi is not None else last_size, run_range)
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

    def _catchup_list(self, lo: str | None) -> KeyListOrder | None:
        """The catch-up's keys, read in one scan (:class:`KeyListOrder`); None when there
        are more than :data:`CATCHUP_LIST_MAX` (then it walks every range)."""

        def read(conn: Connection) -> list[str]:
            found = catchup_keys(conn, lo, CATCHUP_LIST_MAX + 1, self.order.table)
            conn.commit()
            return found

        keys: list[str] = self.retrying("listing the sessions without source_ip", read)
        if len(keys) > CATCHUP_LIST_MAX:
            log.info(
                "%s catchup: more than %d sessions without source_ip: walking every range",
                self.job,
                CATCHUP_LIST_MAX,
            )
            return None
        remaining = max(self._phase_total - self.state.sessions_walked, 0)
        where = ""
        if self.leaves and self.state.leaf in self.leaves:
            # progress: the leaves left share what remains of the phase evenly
            remaining //= len(self.leaves) - self.leaves.index(self.state.leaf)
            where = f" in partition {self.state.leaf}"
        log.info(
            "%s catchup: %d sessions without source_ip to look at again%s",
            self.job,
            len(keys),
            where,
        )
        return KeyListOrder(keys, remaining / len(keys) if keys else 0.0, self.order.table)

    def undo_recorded(self) -> None:
        """Undo the rollback record in batches sized like the walk's (:class:`BatchSizer`)."""
        self._start_phase(WALK)
        while True:
            self.governor.before_batch()
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
                        self._save(conn)
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
                if exc.kind is None or not exc.kind.splits_the_range:
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
                    self._save(conn)
            return counts

        before = _copy_state(self.state)
        try:
            counts = self.retrying(what, attempt, split_on_timeout=True)
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
        if phase == WALK:
            self.walk_candidates += c.candidates
        s.batches += 1
        s.rows_updated += c.updated
        s.sessions_walked = (
            s.sessions_walked + round(self.order.sessions(size))
            if size is not None
            else self._phase_total
        )
        # The catch-up pass sees again every session still lacking a snapshot: sessions
        # it matches are new ones, and its unmatched counts replace the walk's.
        s.matched += c.matched if phase == WALK else c.updated
        s.unmatched_no_ip += c.no_ip
        s.unmatched_not_in_inventory += c.not_in_inventory
        s.last_key = hi
        if hi is None and self._next_leaf is not None:  # the last range of a leaf
            s.leaf = self._next_leaf
            return
        if hi is None:  # the last range of the phase: move on, atomically with it
            s.leaf = None
            following = self.phases[self.phases.index(phase) + 1 :]
            s.phase = following[0] if following else DONE
            s.sessions_walked = 0
            if s.phase == CATCHUP:
                s.unmatched_no_ip = s.unmatched_not_in_inventory = 0
            if s.phase == DONE:
                s.finished_at = progress.utcnow()

    def _save(self, conn: Connection) -> None:
        """Save the position with the engine's state; read the operator's commands."""
        self.governor.received(progress.save(conn, self.state, self.governor.run_columns()))

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
        self.phase_now = phase
        self.governor.pace.restart()
        self.sizer.start_phase(phase)
        self._phase_total = self.state.sessions_total
        self._phase_started = time.monotonic()
        self._phase_done_at_start = self.state.sessions_walked
        self._last_log = time.monotonic()

    def progress(self, phase: str, *, complete: bool = False) -> Progress:
        """Where the job stands; ``complete`` once the phase's last range has committed."""
        total = self._phase_total
        done = total if complete or phase == DONE else min(self.state.sessions_walked, total)
        pace = self.governor.pace
        made = Progress.of(
            self.state,
            self.phases,
            phase=phase,
            done=done,
            walked=done - self._phase_done_at_start,
            elapsed=time.monotonic() - self._phase_started - pace.waited_now(),
            wait_share=pace.wait_share(),
            dry_run=self.dry_run,
        )
        g = self.governor
        return replace(
            made,
            run_state=g.state,
            run_detail=g.detail,
            knobs=self.knobs.describe(),
            waits={k: dict(v) for k, v in g.waits.items()},
        )

    def write_status(self, snap: Progress | None = None) -> None:
        """Rewrite the status file, if there is one: with ``snap``, or where the job
        stands now (while waiting: its state, not a new batch)."""
        if self.knobs.status_file is not None:
            snap = snap or self.progress(self.phase_now)
            progress.write_status_file(self.knobs.status_file, snap)

    def _report(
        self,
        phase: str,
        lo: str | None,
        hi: str | None,
        counts: BatchCounts,
        seconds: float,
        size: int | None = None,
    ) -> None:
        snap = self.progress(phase, complete=hi is None)
        self.write_status(snap)
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
                    snap,
                )
            )
        now = time.monotonic()
        if now - self._last_log >= self.knobs.log_interval / 1000 or hi is None:
            self._last_log = now
            eta = "?" if snap.eta_seconds is None else f"{snap.eta_seconds:.0f} s"
            log.info(
                "%s %s: %d/%d sessions (%.1f%%), %.0f rows/s, ETA %s, %d updated; "
                "batch %d: %s in %.3f s%s",
                self.job,
                phase,
                snap.done,
                snap.total,
                snap.phase_percent,
                snap.rate,
                eta,
                self.state.rows_updated,
                self.state.batches,
                "the last range" if size is None else f"{size} rows",
                seconds,
                f", partition {self.order.table}" if self.order.table != sql.TABLE else "",
            )


def _copy_state(state: JobState) -> JobState:
    return JobState(**state.as_row())
