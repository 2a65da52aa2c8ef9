"""The range walker: one committed transaction per range of keys, with its progress.

It walks ``session_summaries`` in key order (:mod:`.keys`), one range at a time, sized
by :mod:`.sizing`, and each leaf in turn when the table is partitioned. For each range
it runs the job's statement and saves its position in the progress table in the same
short transaction. So no row lock is held longer than one batch, no table lock is
taken, and an interrupted run resumes after the last committed range. A range that
hits ``statement_timeout`` is split in two. Before each range it asks the governor
(:mod:`.governor`) whether it may go; the run's state is the :class:`~.run.Run`'s, the
connection, the claim and the retries of transient failures are
:class:`~.transactions.Transactions`'. When the run ends, its row and the status file
say how: ``finished``, ``stopped`` or ``failed``.

Why one module of this size (~510 lines): :class:`RangeWalker` is one class whose
methods share the walk's position, key order and sizer (walking a table or its leaves,
committing a range and splitting one that timed out, undoing the record); everything
that does not need them has a module of its own: the run's state and what it says
(:mod:`.run`), the governor, the connection and retries (:mod:`.transactions`), key
orders, sizing, and each job's statements (:mod:`.ranges`).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from sqlalchemy import Connection, Engine

from cowrieprocessor.backfill import blocks, control, progress, rollback_record, sql
from cowrieprocessor.backfill.blocks import BlockOrder, BlockPlan
from cowrieprocessor.backfill.errors import BackfillInterrupted, BatchFailed
from cowrieprocessor.backfill.governor import Governor
from cowrieprocessor.backfill.health import HealthMonitor, Reading
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
from cowrieprocessor.backfill.progress import CATCHUP, DONE, WALK, Progress
from cowrieprocessor.backfill.run import BatchCounts, Run
from cowrieprocessor.backfill.sizing import BatchSizer
from cowrieprocessor.backfill.transactions import Transactions
from cowrieprocessor.settings import mask_secrets

log = logging.getLogger("cowrieprocessor.backfill")
# The catch-up lists the sessions it looks at again when there are at most this many
# (about 60 bytes each in memory); more, and it walks every range of the table instead.
CATCHUP_LIST_MAX = 200_000
# reads again of one batch whose rows another writer keeps changing, before it fails
# (rolled back whole; a rerun resumes at that range)
READ_AGAIN_MAX = 5

__all__ = ["BatchCounts", "BatchReport", "RangeWalker", "RunRange"]


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
        stripe: KeyOrder | None = None,
        gate: Callable[[], None] | None = None,
    ) -> None:
        """``stripe`` and ``gate`` make it one worker of a job (:mod:`.workers`): it
        walks only the keys of ``stripe`` (a table or a leaf, up to its ``upper``), under
        its job's claim, and before each batch passes ``gate`` (the job's governor
        decides for all its workers) instead of asking a governor of its own."""
        self.run = Run(job, knobs, phases=phases, dry_run=dry_run)
        claim = control.WorkerClaim() if gate is not None else None
        self.tx = Transactions(engine, self.run, sleep=sleep, claim=claim)
        self.gate = gate
        self.job = job
        self.dry_run = dry_run
        self.dialect = self.tx.dialect
        self.stop = stop or threading.Event()
        self.on_batch = on_batch
        self.sizer = BatchSizer(knobs)
        self._sized_by = knobs
        # Adaptive batches on SQLite walk the physical order (:mod:`.keys`).
        self.key_order: KeyOrder = stripe or SESSION_ID_ORDER
        self.fresh_order: KeyOrder = (
            ROWID_ORDER if self.dialect == "sqlite" and knobs.adaptive else self.key_order
        )
        self.order: KeyOrder = self.fresh_order
        # a fresh walk by blocks: chosen by the job (:meth:`choose_blocks`), never by default
        self._by_blocks = False
        # the server's health (PostgreSQL); a dry run writes no progress row to steer by;
        # a worker's job reads it for all of its workers
        self.monitor = HealthMonitor() if self.dialect == "postgresql" and not gate else None
        self.steered = not dry_run
        self.governor = Governor(
            self.run,
            heartbeat=self._heartbeat if self.steered else None,
            health=self._read_health if self.monitor is not None and not dry_run else None,
        )

    @property
    def knobs(self) -> BackfillKnobs:
        """The knobs in force (the run's; ``cowrie-db control set`` changes them)."""
        return self.run.knobs

    # -- what the governor reads and writes through -------------------------------------

    def _heartbeat(self) -> control.Command:
        job, columns = self.job, self.run.columns()

        def beat(conn: Connection) -> control.Command:
            with self.tx.begin(conn):
                return control.heartbeat(conn, job, columns)

        return self.tx.retrying("reading control commands", beat)  # type: ignore[no-any-return]

    def _read_health(self) -> Reading:
        assert self.monitor is not None
        return self.tx.retrying("reading the server's health", self.monitor.read)  # type: ignore[no-any-return]

    def _before_batch(self) -> None:
        """Wait while the governor holds the next batch back (the caller checks
        ``stop``); raise when the operator asked the run to stop."""
        if self.gate is not None:
            self.gate()
            self.follow_knobs()
            return
        while True:
            decision = self.governor.decide()
            self.follow_knobs()
            if decision.stop:
                raise BackfillInterrupted(decision.reason)
            if decision.go:
                if decision.seconds and not self.stop.is_set():
                    self.stop.wait(decision.seconds)  # pause_ms
                return
            self.run.write_status()
            self.stop.wait(decision.seconds)
            if self.stop.is_set():
                return

    def follow_knobs(self) -> None:
        """Knobs changed while running (``cowrie-db control set``): from the next batch."""
        if self.run.knobs is not self._sized_by:
            self._sized_by = self.run.knobs
            self.sizer.retune(self.run.knobs)

    # -- the run's start and end -------------------------------------------------------

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
            self.governor.end()
            self.run.end(ended, detail)
            conn = self.tx.usable()
            if conn is not None and self.tx.claimed:
                self._record_end(conn)
            if self.tx.claimed:
                try:
                    self.run.write_status(
                        self.run.progress(DONE if error is None else self.run.phase_now)
                    )
                except OSError as exc:  # must not hide how the run ended
                    log.warning("could not rewrite the status file: %s", exc)
        finally:
            self.tx.close()

    def _record_end(self, conn: Connection) -> None:
        """Take a last WAL reading for the summary and say how the run ended in the row
        (best effort: a failure here must not hide why the run ended, and the undo drops
        the table before)."""
        try:
            if self.governor.measures_wal and self.monitor is not None:
                self.governor.wal_at_end(self.monitor.read(conn))
            if self.steered:
                with self.tx.begin(conn):
                    control.heartbeat(conn, self.job, self.run.columns())
        except Exception as exc:
            if conn.in_transaction():
                conn.rollback()
            log.debug("could not record the end of the run: %s", exc)

    # -- walking -------------------------------------------------------------------

    def bound_after(self, lo: str | None, offset: int) -> str | None:
        """The key ``offset`` places after ``lo`` (None: fewer keys remain)."""
        order = self.order

        def find(conn: Connection) -> str | None:
            value = order.bound_after(conn, lo, offset)
            conn.commit()
            return value

        what = f"finding the range after {order.show(lo) if lo is not None else 'the start'}"
        return self.tx.retrying(what, find)  # type: ignore[no-any-return]

    def count_range(self, lo: str | None, hi: str | None) -> int:
        order = self.order

        def count(conn: Connection) -> int:
            n = order.count(conn, lo, hi)
            conn.commit()
            return n

        return self.tx.retrying(f"counting {order.describe(lo, hi)}", count)  # type: ignore[no-any-return]

    def walk(self, phase: str, run_range: RunRange) -> None:
        """Walk every range of ``phase`` from the saved position to the end: of the
        table, or of each leaf in turn from the saved one when it is partitioned."""
        self.start_phase(phase)
        run, leaves = self.run, self.run.leaves
        if not leaves:
            if run.state.leaf is not None:
                log.warning(
                    "%s %s: the saved position is in partition %s, but session_summaries "
                    "is not partitioned now: restarting the %s from the start",
                    self.job,
                    phase,
                    run.state.leaf,
                    phase,
                )
                run.move_to(None)
            run.next_leaf = None
            self._walk_table(phase, run_range, None)
            return
        first = run.resume_leaf(phase, leaves)
        for n in range(first, len(leaves)):
            leaf = leaves[n]
            if run.state.leaf != leaf:
                run.move_to(leaf)
            run.next_leaf = leaves[n + 1] if n + 1 < len(leaves) else None
            self._walk_table(phase, run_range, leaf)

    def walk_stripe(self, run_range: RunRange) -> None:
        """A worker: walk its stripe (``stripe``) from the saved position to its end."""
        self.start_phase(WALK)
        self.run.next_leaf = None
        self._walk_table(WALK, run_range, None)

    def _walk_table(self, phase: str, run_range: RunRange, leaf: str | None) -> None:
        """Walk the ranges of one table (``leaf``, or session_summaries when None) from
        the saved position to its end."""
        lo = self.run.state.last_key
        if blocks.owns(lo) and self.gate is None:
            plan = BlockPlan.decode(self.run.state.walk_plan)
            if plan is None or not self._same_file(plan):
                self._say_rewritten(phase)
                self.run.move_to(None)
                self.run.restart_phase()
                lo = None
        if lo is None:
            order = self.fresh_order
            if phase == WALK and leaf is None and self.by_blocks:
                order = self._plan_blocks()
        elif blocks.owns(lo):
            order = self._block_order()  # a worker's stripe, or the job's own plan
        elif ROWID_ORDER.owns(lo) and self.dialect == "sqlite":
            order = ROWID_ORDER  # resume in the order the phase was started in
        else:
            order = self.key_order
        self.order = order if leaf is None else order.in_table(leaf)
        if phase == CATCHUP and self.dialect == "postgresql" and not self.dry_run:
            moved = BlockPlan.decode(self.run.state.walk_plan)
            if moved is not None:
                self.order = KeyOrder(self.order.table)
                self.order.moved_since = moved.since
            self.order = self._catchup_list(lo) or self.order
        while True:
            self._before_batch()
            if self.stop.is_set():
                where = "" if leaf is None else f" of partition {leaf}"
                raise BackfillInterrupted(
                    f"stopped after {self.order.describe(None, lo)}{where}; rerun to resume"
                )
            size = self.sizer.size
            hi = self.bound_after(lo, size - 1)
            if hi is not None:
                hi = self.order.widened(lo, hi, self.sizer.limit)
            if hi is not None:
                size = self.order.held(lo, hi, size)
            # the last range of a leaf that is not the last: its exact size, for progress
            last_size = self.count_range(lo, None) if hi is None and self.run.next_leaf else None
            try:
                self._process(phase, lo, hi, size if hi is not None else last_size, run_range)
            except PositionLost:
                if isinstance(self.order, BlockOrder):
                    if self.gate is not None:  # a worker: its job plans the walk again
                        raise BatchFailed(
                            f"{self.job}: {blocks.REWRITTEN}; rerun to walk it with a new plan"
                        ) from None
                    self._say_rewritten(phase)
                    self.order = self._plan_blocks()
                    self.run.restart_phase()
                    lo = None
                    continue
                log.warning(
                    "%s %s: the rowid position %s no longer holds its session (the file "
                    "was vacuumed?): restarting the %s in session_id order",
                    self.job,
                    phase,
                    self.order.show(lo) if lo is not None else "(start)",
                    phase,
                )
                self.order = SESSION_ID_ORDER
                self.run.restart_phase()
                lo = None
                continue
            if hi is None:
                return
            lo = hi

    def _catchup_list(self, lo: str | None) -> KeyListOrder | None:
        """The catch-up's keys, read in one scan (:class:`KeyListOrder`); None when there
        are more than :data:`CATCHUP_LIST_MAX` (then it walks every range)."""

        order = self.order

        def read(conn: Connection) -> list[str]:
            found = catchup_keys(conn, lo, CATCHUP_LIST_MAX + 1, order)
            conn.commit()
            return found

        keys: list[str] = self.tx.retrying("listing the sessions without source_ip", read)
        if len(keys) > CATCHUP_LIST_MAX:
            log.info(
                "%s catchup: more than %d sessions without source_ip: walking every range",
                self.job,
                CATCHUP_LIST_MAX,
            )
            return None
        run = self.run
        remaining = max(run.phase_total - run.state.sessions_walked, 0)
        where = ""
        if run.leaves and run.state.leaf in run.leaves:
            # progress: the leaves left share what remains of the phase evenly
            remaining //= len(run.leaves) - run.leaves.index(run.state.leaf)
            where = f" in partition {run.state.leaf}"
        log.info(
            "%s catchup: %d sessions without source_ip to look at again%s",
            self.job,
            len(keys),
            where,
        )
        listed = KeyListOrder(keys, remaining / len(keys) if keys else 0.0, order.table, start=lo)
        listed.moved_since = order.moved_since
        return listed

    # -- the walk by blocks (:mod:`.blocks`) ----------------------------------------------

    @property
    def by_blocks(self) -> bool:
        """Whether a walk that starts now goes by blocks (a dry run walks by key)."""
        return self._by_blocks and self.dialect == "postgresql" and not self.dry_run

    def choose_blocks(self, chosen: bool) -> None:
        """The job's choice of order for a fresh walk, once :func:`.blocks.refusal` was
        asked (``walk_order``; a saved position keeps the order it was walked in)."""
        self._by_blocks = chosen

    def _plan_blocks(self) -> BlockOrder:
        """A new plan for the job's walk, kept in its state (saved with the first batch)."""
        plan, per_block = self.tx.retrying("planning the walk by blocks", self.read_block_plan(1))
        self.run.state.walk_plan = plan.encode()
        log.info(
            "%s: walking %d blocks by blocks: %d segment(s) of %d blocks, %d rounds each",
            self.job,
            plan.blocks,
            plan.segments,
            plan.segment,
            plan.rounds,
        )
        return BlockOrder(plan, per_block)

    def read_block_plan(self, parts: int) -> Callable[[Connection], tuple[BlockPlan, float]]:
        """A read of a new plan with at least ``parts`` segments (for ``tx.retrying``)."""
        rows = self.knobs.batch_size

        def read(conn: Connection) -> tuple[BlockPlan, float]:
            found = blocks.read_plan(conn, sql.SESSIONS_TABLE, rows, parts)
            conn.rollback()
            return found

        return read

    def _block_order(self) -> KeyOrder:
        """The order of a resumed walk by blocks: the worker's stripe, or the job's plan."""
        if isinstance(self.key_order, BlockOrder):
            return self.key_order
        plan = BlockPlan.decode(self.run.state.walk_plan)
        assert plan is not None  # checked by _walk_table
        return BlockOrder(plan, self.rows_per_block())

    def rows_per_block(self) -> float:
        """The table's rows per block as the planner counts them (to size a walk by
        blocks that resumes)."""

        def read(conn: Connection) -> float:
            found = blocks.read_rows_per_block(conn, sql.SESSIONS_TABLE)
            conn.rollback()
            return found

        return self.tx.retrying("reading the table's size", read)  # type: ignore[no-any-return]

    def _say_rewritten(self, phase: str) -> None:
        log.warning(
            "%s %s: %s: walking it again with a new plan", self.job, phase, blocks.REWRITTEN
        )

    def _same_file(self, plan: BlockPlan) -> bool:
        def read(conn: Connection) -> bool:
            same = plan.same_file(conn)
            conn.rollback()
            return same

        return self.tx.retrying("reading the table's file", read)  # type: ignore[no-any-return]

    def undo_recorded(self) -> None:
        """Undo the rollback record in batches sized like the walk's (:class:`BatchSizer`)."""
        self.start_phase(WALK)
        run = self.run
        while True:
            self._before_batch()
            if self.stop.is_set():
                raise BackfillInterrupted("stopped between two batches; rerun to resume")
            started = time.monotonic()

            size = self.sizer.size

            def attempt(conn: Connection, size: int = size) -> tuple[int, int, int] | None:
                with self.tx.begin(conn):
                    undone = rollback_record.undo_next(conn, size)
                    if undone is not None:
                        run.undone(undone[1], undone[2])
                        self._save(conn)
                return undone

            before = run.checkpoint()
            try:
                undone = self.tx.retrying(f"{self.job} batch {run.state.batches + 1}", attempt)
            except BaseException:
                run.restore(before)
                raise
            if undone is None:
                return
            record_id, entries, changed = undone
            seconds = time.monotonic() - started
            run.batch_seconds.append(seconds)
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
                self.run.split()
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
        order, run = self.order, self.run
        what = f"{self.job} {phase} batch {run.state.batches + 1}, {order.describe(lo, hi)}"
        batch = Range(phase, order, lo, hi)
        sessions = round(order.sessions(size)) if size is not None else None

        def attempt(conn: Connection) -> BatchCounts:
            with self.tx.begin(conn):
                self._set_timeouts(conn)
                if not order.still_valid(conn, lo):
                    raise PositionLost(what)
                counts = self._read_again(conn, run_range, batch, run_range(conn, batch), what)
                if not self.dry_run:
                    run.advance(phase, hi, sessions, counts)
                    self._save(conn)
            return counts

        before = run.checkpoint()
        try:
            counts = self.tx.retrying(what, attempt, split_on_timeout=True)
        except BaseException:
            run.restore(before)  # the saved row was rolled back with the batch
            raise
        if self.dry_run:
            run.advance(phase, hi, sessions, counts)
        seconds = time.monotonic() - started
        run.batch_seconds.append(seconds)
        if size is not None:
            self.sizer.observe(size, seconds)
        self._report(phase, lo, hi, counts, seconds, size)

    def _read_again(
        self, conn: Connection, run_range: RunRange, batch: Range, counts: BatchCounts, what: str
    ) -> BatchCounts:
        """Rows another writer changed between the batch's read and its UPDATE were left
        as they are. A range of keys is read again in the same transaction: its next
        statement sees their new versions (a walk by blocks leaves them to the catch-up,
        which looks at every row written since the walk began). The counts stay the first
        read's, with the rows that the reads again updated."""
        again = 0
        while counts.changed_meanwhile and batch.order.reads_again:
            if again == READ_AGAIN_MAX:
                raise BatchFailed(
                    f"{what}: another writer changed {counts.changed_meanwhile} of its "
                    f"sessions while it read them, {again + 1} times running; rerun to finish"
                )
            again += 1
            log.info(
                "%s: %d session(s) changed by another writer while it read them: reading "
                "them again",
                what,
                counts.changed_meanwhile,
            )
            more = run_range(conn, batch)
            counts = dataclasses.replace(
                counts,
                updated=counts.updated + more.updated,
                changed_meanwhile=more.changed_meanwhile,
            )
        return counts

    def _save(self, conn: Connection) -> None:
        """Save the position with the engine's state; read the operator's commands."""
        self.governor.received(progress.save(conn, self.run.state, self.run.columns()))

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

    def start_phase(self, phase: str) -> None:
        self.run.start_phase(phase)
        self.sizer.start_phase(phase)

    def _report(
        self,
        phase: str,
        lo: str | None,
        hi: str | None,
        counts: BatchCounts,
        seconds: float,
        size: int | None = None,
    ) -> None:
        snap = self.run.progress(phase, complete=hi is None)
        self.run.write_status(snap)
        if self.on_batch is not None:
            batch = self.run.state.batches
            self.on_batch(BatchReport(self.job, phase, batch, lo, hi, counts, seconds, snap))
        leaf = self.order.table if self.order.table != sql.SESSIONS_TABLE else None
        self.run.log_batch(snap, size, seconds, leaf=leaf, last=hi is None)
