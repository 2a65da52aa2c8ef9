"""Parallel workers (PostgreSQL): the backfill's walk split into stripes, walked at once.

PostgreSQL never runs an ``UPDATE`` in parallel: one statement, or one walker, uses one
core of the server. With ``workers`` N > 1 the walk phase is split into *stripes* and N
connections walk them at once, each in batches as one walker does
(:class:`~.walker.RangeWalker`, one committed transaction per range):

* on a plain table, N stripes of ``session_id`` ``(lo, hi]`` of about equal size, their
  bounds quantiles of the key (:mod:`.stripes`: the planner's histogram, or a page
  sample; never a scan of the table);
* on a partitioned table, one stripe per leaf partition (hash partitions each span the
  whole key range, so a key stripe would touch every leaf); ``workers=auto`` starts one
  worker per leaf, at most :data:`~.knobs.AUTO_WORKERS` (``auto:N``: at most N); a
  number N walks the leaves N at a time.

**Resume.** Each stripe has its own progress row, ``<job>/<n>`` (its bounds in
``stripe_lo``/``stripe_hi``, or its leaf), written with each of its batches in the same
transaction, exactly as a single walker's row is. The stripes are planned once, when
the walk starts (or resumes from a single walker's position: they cover what is left);
a rerun after ``kill -9`` finds the rows and goes on with every stripe where it stopped,
with as many workers as it is given now. When the last stripe is walked, the job's row
takes their counts and moves to the catch-up pass in the transaction that deletes their
rows; the catch-up runs once, with one connection.

**One governor.** The job's own connection keeps the claim (the advisory lock: its
workers take none, :class:`~.control.WorkerClaim`) and its governor
(:mod:`.governor`): the coordinator asks it every second (:data:`LOOK_S`) and opens or
closes the gate every worker passes before each batch. Replica lag, WAL rate and the
operator's pause, resume, stop and ``set`` thus hold every worker; ``pause_ms`` is slept
by each worker after each of its batches; ``batch_time`` sizes each worker's batches.
What the governor counted per batch (the WAL a batch is expected to write) it counts
per look here: the WAL all workers write in one second.

A worker that fails stops the others after their batch in flight; the run fails with
the first error, and every stripe's row says where it stands. SQLite has one writer:
``workers`` > 1 is refused there (:func:`check_dialect`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace

from sqlalchemy import Connection, Engine

from cowrieprocessor.backfill import blocks, progress, sql
from cowrieprocessor.backfill.blocks import BlockOrder, BlockPlan
from cowrieprocessor.backfill.errors import BackfillInterrupted
from cowrieprocessor.backfill.keys import KeyOrder
from cowrieprocessor.backfill.knobs import BackfillKnobs, KnobError
from cowrieprocessor.backfill.progress import DONE, WALK, JobState, worker_view
from cowrieprocessor.backfill.stripes import plan, plan_blocks, worker_job
from cowrieprocessor.backfill.walker import BatchReport, RangeWalker, RunRange

log = logging.getLogger("cowrieprocessor.backfill")

LOOK_S = 1.0  # how often the coordinator asks the governor while the workers run
GATE_POLL_S = 0.25  # how often a worker held at the gate looks whether it should stop


def check_dialect(knobs: BackfillKnobs, dialect: str) -> None:
    """Refuse ``workers`` > 1 on SQLite (one writer at a time), by name."""
    if dialect == "sqlite" and (knobs.workers > 1 or knobs.workers_per_leaf):
        raise KnobError(
            f"workers={knobs.show_workers()}: SQLite lets one connection write at a time, "
            "so workers would only wait for each other; run with workers=1 (the default)"
        )


# -- walking them -----------------------------------------------------------------------


class Stripes:
    """The coordinator of one parallel walk; see the module docstring."""

    def __init__(
        self,
        coordinator: RangeWalker,
        engine: Engine,
        run_range: RunRange,
        on_batch: Callable[[BatchReport], None] | None,
    ) -> None:
        self.coordinator = coordinator
        self.engine = engine
        self.run_range = run_range
        self.on_batch = on_batch
        self.stop = threading.Event()  # the workers stop after their batch in flight
        self.gate = threading.Event()  # open: the governor lets batches go
        self.lock = threading.Lock()
        self.queue: deque[JobState] = deque()
        self.walkers: dict[str, RangeWalker] = {}
        self.states: dict[str, JobState] = {}
        self.errors: list[BaseException] = []
        self.batch_seconds: list[float] = []
        self.walk_candidates = 0
        self.base = coordinator.run.checkpoint()
        self.per_block = 0.0  # a walk by blocks: the table's rows per block

    def walk(self, leaves: list[str] | None) -> bool:
        """Walk every stripe (planned now, or found saved) to its end, then merge them
        into the job's row, which moves to its next phase. False (nothing done) when one
        worker walks and no stripes of an earlier run are saved: the walker walks."""
        c = self.coordinator
        knobs = c.run.knobs
        n = workers_for(knobs, leaves)
        saved = c.tx.retrying("reading the workers' stripes", saved_stripes(c.run.job))
        saved = c.tx.retrying("checking the stripes' partitions", self._recheck(saved, leaves))
        if not saved and n <= 1:
            if knobs.workers_per_leaf:
                log.info(
                    "workers=%s: session_summaries is not partitioned: one worker",
                    knobs.show_workers(),
                )
            return False
        if saved:
            log.info(
                "resuming %d stripe(s) of an earlier run with workers (%d walked)",
                len(saved),
                sum(s.phase == DONE for s in saved),
            )
        else:
            state = c.run.state
            if (c.by_blocks and leaves is None and state.last_key is None) or (
                blocks.owns(state.last_key)
            ):
                saved = self._plan_blocks(n)
            else:
                saved = c.tx.retrying(
                    "planning the workers' stripes", lambda conn: plan(conn, state, leaves, n)
                )
            for stripe in saved:
                left = c.run.state.sessions_total - c.run.state.sessions_walked
                stripe.sessions_total = _share(max(left, 0), len(saved))
            c.tx.retrying("saving the workers' stripes", _save_stripes(saved, c))
        if any(s.walk_plan for s in saved):
            self.per_block = c.rows_per_block()
        self.base = c.run.checkpoint()  # with the plan of a walk by blocks
        c.start_phase(WALK)
        self.states = {s.job: s for s in saved}
        self.queue.extend(s for s in saved if s.phase != DONE)
        count = min(max(n, 1), len(self.queue))
        log.info(
            "walking %d stripe(s) with %d worker(s) (workers=%s)",
            len(self.queue),
            count,
            knobs.show_workers(),
        )
        threads = [
            threading.Thread(target=self._work, name=f"backfill-worker-{n + 1}", daemon=True)
            for n in range(count)
        ]
        for thread in threads:
            thread.start()
        try:
            self._govern(threads)
        finally:
            self.stop.set()
            self.gate.set()
            for thread in threads:
                thread.join()
            self._publish()
        self._raise_first_error()
        c.tx.retrying("merging the workers' stripes", self._merge)
        return True

    def _plan_blocks(self, n: int) -> list[JobState]:
        """Stripes of a walk by blocks: of the job's plan when it walked by blocks alone
        so far, else of a new one, kept in the job's row (saved with the stripes)."""
        c = self.coordinator
        state = c.run.state
        plan = BlockPlan.decode(state.walk_plan) if blocks.owns(state.last_key) else None
        if plan is None:
            plan, _ = c.tx.retrying("planning the walk by blocks", c.read_block_plan(n))
            state.walk_plan = plan.encode()
            state.last_key = None
        return plan_blocks(state, plan, n)

    def _recheck(
        self, saved: list[JobState], leaves: list[str] | None
    ) -> Callable[[Connection], list[JobState]]:
        """Saved stripes against the table as it is now: a partition gone since is
        skipped, one attached since gets a stripe, and stripes of partitions on a table
        that is no longer partitioned are dropped (the walk is planned again, from the
        job's own position)."""
        job = self.coordinator.run.job

        def recheck(conn: Connection) -> list[JobState]:
            plans = {p for p in map(BlockPlan.decode, (s.walk_plan for s in saved)) if p}
            if plans:
                if not all(p.same_file(conn) for p in plans):
                    with conn.begin():
                        log.warning("%s: %s: planning the walk again", job, blocks.REWRITTEN)
                        progress.delete_workers(conn, job)
                        state = self.coordinator.run.state
                        state.last_key = state.walk_plan = None
                        state.sessions_walked = 0
                        progress.save(conn, state)
                    return []
                conn.rollback()
            by_leaf = [s for s in saved if s.leaf is not None]
            if not by_leaf:
                return saved
            with conn.begin():
                if leaves is None:
                    log.warning(
                        "%s: the saved stripes are partitions, but session_summaries is not "
                        "partitioned now: planning the walk again",
                        job,
                    )
                    progress.delete_workers(conn, job)
                    return []
                for stripe in by_leaf:
                    if stripe.leaf not in leaves and stripe.phase != DONE:
                        log.warning(
                            "%s: partition %s is gone: its stripe is skipped",
                            stripe.job,
                            stripe.leaf,
                        )
                        stripe.phase = DONE
                        progress.save(conn, stripe)
                known = {s.leaf for s in by_leaf}
                added = [leaf for leaf in leaves if leaf not in known]
                for n, leaf in enumerate(added, start=len(saved) + 1):
                    log.warning("partition %s was attached since the walk began: walking it", leaf)
                    stripe = JobState(job=worker_job(job, n), leaf=leaf)
                    progress.save(conn, stripe)
                    saved.append(stripe)
            return saved

        return recheck

    # -- the coordinator -----------------------------------------------------------------

    def _govern(self, threads: list[threading.Thread]) -> None:
        """Ask the governor every second while a worker runs; open or close the gate."""
        c = self.coordinator
        governor = c.governor
        while any(t.is_alive() for t in threads):
            if c.stop.is_set() or self.stop.is_set():
                self.stop.set()
                return
            if self.gate.is_set():
                governor.poll()  # while it holds, the governor polls by itself
            decision = governor.decide()
            c.follow_knobs()
            if decision.stop:
                self.stop.set()
                self.errors.append(BackfillInterrupted(decision.reason))
                return
            if decision.go:
                self.gate.set()
                wait = LOOK_S
            else:
                self.gate.clear()
                wait = decision.seconds
            self._publish()
            self._sleep(wait, threads)

    def _sleep(self, seconds: float, threads: list[threading.Thread]) -> None:
        """Wait ``seconds``, or less when the run is stopped or every worker is done."""
        until = time.monotonic() + seconds
        while (left := until - time.monotonic()) > 0:
            if self.coordinator.stop.wait(min(left, GATE_POLL_S)) or self.stop.is_set():
                return
            if not any(t.is_alive() for t in threads):
                return

    def _publish(self) -> None:
        """The job's progress as the sum of its stripes': the status file, the row's
        engine columns (written by the next heartbeat)."""
        with self.lock:
            self._refresh()
        self.coordinator.run.write_status()

    def _refresh(self) -> None:
        """The job's state as shown: its own, plus its stripes' (the lock held)."""
        run = self.coordinator.run
        states = [self._state_now(job) for job in sorted(self.states)]
        run.workers = [worker_view(s, self._run_state(s.job)) for s in states]
        # shown only: the job's row keeps its own counts until the merge adds theirs
        run.state = progress.with_stripes(self.base, states)

    def _state_now(self, job: str) -> JobState:
        walker = self.walkers.get(job)
        return walker.run.state if walker is not None else self.states[job]

    def _run_state(self, job: str) -> str:
        walker = self.walkers.get(job)
        if walker is not None:
            return walker.run.run_state
        return "finished" if self.states[job].phase == DONE else "waiting"

    # -- each worker ---------------------------------------------------------------------

    def _work(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                if not self.queue:
                    return
                stripe = self.queue.popleft()
            try:
                self._walk_stripe(stripe)
            except BaseException as exc:  # the coordinator raises it
                with self.lock:
                    self.errors.append(exc)
                self.stop.set()
                return

    def _walk_stripe(self, stripe: JobState) -> None:
        c = self.coordinator
        knobs = replace(c.run.knobs, status_file=None)  # the job's file says it all
        plan = BlockPlan.decode(stripe.walk_plan)
        order: KeyOrder
        if plan is not None:
            order = BlockOrder(plan, self.per_block, upper=stripe.stripe_hi)
        else:
            order = KeyOrder(stripe.leaf or sql.SESSIONS_TABLE, upper=stripe.stripe_hi)
        walker = RangeWalker(
            self.engine,
            knobs,
            job=stripe.job,
            stop=self.stop,
            on_batch=self._report,
            stripe=order,
            gate=lambda: self._pass_gate(walker),
        )
        with walker:
            total = stripe.sessions_total

            def start(conn: Connection) -> None:
                with walker.tx.begin(conn):
                    walker.tx.take_claim(conn)
                    walker.run.resume(stripe)  # as read or planned by the coordinator
                    walker.run.count_sessions(total)
                    progress.save(conn, walker.run.state, walker.run.columns())

            walker.tx.retrying(f"starting {stripe.job}", start)
            with self.lock:
                self.walkers[stripe.job] = walker
            walker.walk_stripe(self.run_range)
        with self.lock:
            self.states[stripe.job] = walker.run.state
            self.batch_seconds += walker.run.batch_seconds
            self.walk_candidates += walker.run.walk_candidates

    def _pass_gate(self, walker: RangeWalker) -> None:
        """Before each batch of a worker: wait while the governor holds every worker,
        follow the knobs the operator set, then sleep ``pause_ms``."""
        while not self.gate.wait(GATE_POLL_S):
            if self.stop.is_set():
                return
        knobs = self.coordinator.run.knobs
        if walker.run.knobs.describe() != knobs.describe():
            walker.run.change_knobs(replace(knobs, status_file=None))
        if knobs.pause_ms and not self.stop.is_set():
            self.stop.wait(knobs.pause_ms / 1000)

    def _report(self, report: BatchReport) -> None:
        if self.on_batch is None:
            return
        with self.lock:
            self._refresh()
            snap = self.coordinator.run.progress(WALK)
            self.on_batch(replace(report, job=self.coordinator.run.job, progress=snap))

    # -- the end ---------------------------------------------------------------------------

    def _raise_first_error(self) -> None:
        """The first failure, if a worker failed; else the operator's stop, if any."""
        failures = [e for e in self.errors if not isinstance(e, BackfillInterrupted)]
        if failures:
            raise failures[0]
        if self.errors:
            raise self.errors[0]
        walked = sum(s.phase == DONE for s in self._all())
        if self.coordinator.stop.is_set() or walked < len(self.states):
            raise BackfillInterrupted(
                f"stopped with {walked} of {len(self.states)} stripe(s) walked; rerun to resume"
            )

    def _all(self) -> list[JobState]:
        return [self._state_now(job) for job in self.states]

    def _merge(self, conn: Connection) -> None:
        """Every stripe is walked: the job's row takes their counts and moves on, and
        their rows go, in one transaction."""
        c = self.coordinator
        with c.tx.begin(conn):
            stripes = progress.load_workers(conn, c.run.job)
            base = progress.load(conn, c.run.job)
            assert base is not None and all(s.phase == DONE for s in stripes)
            base.sessions_total = c.run.state.sessions_total
            c.run.resume(base)
            c.run.merge_workers(stripes)
            c.run.walk_candidates += self.walk_candidates
            c.run.batch_seconds += self.batch_seconds
            c.run.workers = []
            progress.delete_workers(conn, c.run.job)
            progress.save(conn, c.run.state, c.run.columns())


def _share(total: int, parts: int) -> int:
    return -(-total // parts) if parts else total


def saved_stripes(job: str) -> Callable[[Connection], list[JobState]]:
    """A read of ``job``'s saved stripes, ending its transaction (for ``tx.retrying``)."""

    def load(conn: Connection) -> list[JobState]:
        found = progress.load_workers(conn, job)
        conn.rollback()
        return found

    return load


def _save_stripes(stripes: list[JobState], c: RangeWalker) -> Callable[[Connection], None]:
    """Save the stripes, and the job's row with them (its plan of a walk by blocks)."""

    def save(conn: Connection) -> None:
        with c.tx.begin(conn):
            progress.save(conn, c.run.state)
            for stripe in stripes:
                progress.save(conn, stripe)

    return save


def workers_for(knobs: BackfillKnobs, leaves: list[str] | None) -> int:
    """How many workers a run starts: ``auto`` is one per leaf (one on a plain table)."""
    if knobs.workers_per_leaf:
        return min(knobs.workers, len(leaves)) if leaves else 1
    return knobs.workers
