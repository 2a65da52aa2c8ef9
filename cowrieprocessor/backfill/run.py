"""One run of a job, and the one object that owns its state (:class:`Run`).

A run's state is what ``status``, the status file and the progress row say about it:
where the job stands (:class:`~.progress.JobState`: phase, position, counts), the
partitions it walks, the engine's state (``running``, ``throttled``, ``paused``,
``stopping``, then ``finished``, ``stopped`` or ``failed``) and why, the knobs in force,
the waits per signal, and the pace (:class:`Pace`: how much of the recent wall clock
went to waiting, for an honest ETA). The walker (:mod:`.walker`), the governor
(:mod:`.governor`) and the jobs (:mod:`.jobs`) change it only through the methods
below; its clock is injectable, so tests drive it without sleeping.

What is not here, and why: the connection, the job's claim and the retries live in
:mod:`.transactions` (they are resources, held and released, not state); the range
sizes in :mod:`.sizing`.
"""

from __future__ import annotations

import json
import logging
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from cowrieprocessor.backfill import control, progress
from cowrieprocessor.backfill.knobs import BackfillKnobs
from cowrieprocessor.backfill.progress import CATCHUP, DONE, WALK, JobState, Progress, utcnow

log = logging.getLogger("cowrieprocessor.backfill")
Clock = Callable[[], float]  # seconds, monotonic (time.monotonic, or a test's fake)
PACE_WINDOW_S = 120.0  # the ETA's "recent" share of waiting is over this much wall clock


@dataclass
class BatchCounts:
    """What one range's statement found and did."""

    candidates: int = 0
    no_ip: int = 0
    matched: int = 0
    updated: int = 0
    # sessions whose IP came from each of sql.IP_SOURCES (dry runs only)
    by_source: tuple[int, ...] = ()
    # rows it would have changed that another writer changed between its read and its
    # UPDATE, left as they are (PostgreSQL, the join-back by ctid): to read again
    changed_meanwhile: int = 0

    @property
    def not_in_inventory(self) -> int:
        return self.candidates - self.no_ip - self.matched


class Pace:
    """How much of the recent wall clock went to waiting, for an honest ETA."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self.started = clock()
        self.waited = 0.0  # seconds waited since the phase started
        self._waits: deque[tuple[float, float]] = deque()  # (start, end) of recent waits
        self._open: float | None = None

    def restart(self) -> None:
        self.started, self.waited = self.clock(), 0.0
        self._waits.clear()

    def begin_wait(self) -> None:
        if self._open is None:
            self._open = self.clock()

    def end_wait(self) -> None:
        if self._open is not None:
            end = self.clock()
            self.waited += end - self._open
            self._waits.append((self._open, end))
            self._open = None

    def waited_now(self) -> float:
        """Seconds waited in this phase, the wait going on included."""
        return self.waited + (self.clock() - self._open if self._open is not None else 0.0)

    def wait_share(self) -> float:
        """The share of the last :data:`PACE_WINDOW_S` seconds spent waiting (0..1)."""
        now = self.clock()
        since = max(self.started, now - PACE_WINDOW_S)
        while self._waits and self._waits[0][1] <= since:
            self._waits.popleft()
        spans = list(self._waits) + ([(self._open, now)] if self._open is not None else [])
        waited = sum(end - max(start, since) for start, end in spans)
        window = now - since
        return min(1.0, waited / window) if window > 0 else 0.0


class Run:
    """The state of one run of ``job``; see the module docstring."""

    def __init__(
        self,
        job: str,
        knobs: BackfillKnobs,
        *,
        phases: tuple[str, ...] = (WALK,),
        dry_run: bool = False,
        clock: Clock = time.monotonic,
    ) -> None:
        self.job = job
        self.phases = phases
        self.dry_run = dry_run
        self.clock = clock
        self.knobs = knobs  # in force now (``cowrie-db control set`` changes them)
        self.state = JobState(job=job)
        # A partitioned session_summaries (PostgreSQL): its leaves, walked one after the
        # other (:mod:`cowrieprocessor.db.partitions`); the leaf after the one being
        # walked (None: the last, or not partitioned).
        self.leaves: list[str] | None = None
        self.next_leaf: str | None = None
        # the engine's state, as the progress row and the status file show it
        self.run_state = control.RUNNING
        self.detail = ""
        self.waits: dict[str, dict[str, float]] = {}  # signal -> {"waits", "seconds"}
        self.pace = Pace(clock)
        self.applied_seq = 0  # the last ``control set`` applied
        self.backend: int | None = None  # PostgreSQL: the backend pid holding the claim
        # the phase being walked: its sessions, when it started, where it started from
        self.phase_now = phases[0]
        self.phase_total = 0
        self._phase_started = clock()
        self._phase_done_at_start = 0
        self._last_log = 0.0  # when the last progress line was logged
        # sessions lacking a snapshot column, as this run's walk found them
        self.walk_candidates = 0
        self.batch_seconds: list[float] = []
        # with workers (:mod:`.workers`): where each one stands, for the status
        self.workers: list[dict[str, Any]] = []
        self.stripe_batches: dict[str, int] = {}  # each stripe's batches, once merged

    # -- where the job stands ------------------------------------------------------------

    def resume(self, saved: JobState | None) -> None:
        """The job's state when the run starts: ``saved`` (an unfinished run), or new."""
        self.state = saved if saved is not None else JobState(job=self.job)

    def found_leaves(self, leaves: list[str] | None) -> None:
        self.leaves = leaves

    def count_sessions(self, total: int) -> None:
        self.state.sessions_total = total

    def checkpoint(self) -> JobState:
        """A copy of the job's state, to :meth:`restore` when a batch rolls back."""
        return JobState(**self.state.as_row())

    def restore(self, state: JobState) -> None:
        self.state = state

    def move_to(self, leaf: str | None, last_key: str | None = None) -> None:
        """The walk goes on in ``leaf`` (None: the table as a whole), after ``last_key``."""
        self.state.leaf, self.state.last_key = leaf, last_key

    def resume_leaf(self, phase: str, leaves: list[str]) -> int:
        """The index of the leaf to start in: the saved one, else the first after it in
        name order (it was detached or dropped since), else the first."""
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
                self.move_to(None)
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
        self.move_to(saved)
        return following

    def restart_phase(self) -> None:
        """The phase starts again from its first key (its position was lost)."""
        self.state.sessions_walked = 0

    def retried(self) -> None:
        self.state.retries += 1

    def split(self) -> None:
        self.state.splits += 1

    def advance(self, phase: str, hi: str | None, sessions: int | None, c: BatchCounts) -> None:
        """A range of ``phase`` up to ``hi`` (None: the end of the table or leaf) was
        walked: ``sessions`` of them (None: the rest of the phase), which did ``c``."""
        s = self.state
        if phase == WALK:
            self.walk_candidates += c.candidates
        s.batches += 1
        s.rows_updated += c.updated
        s.sessions_walked = (
            s.sessions_walked + sessions if sessions is not None else self.phase_total
        )
        # The catch-up pass sees again every session still lacking a snapshot: sessions
        # it matches are new ones, and its unmatched counts replace the walk's.
        s.matched += c.matched if phase == WALK else c.updated
        s.unmatched_no_ip += c.no_ip
        s.unmatched_not_in_inventory += c.not_in_inventory
        s.last_key = hi
        if hi is None and self.next_leaf is not None:  # the last range of a leaf
            s.leaf = self.next_leaf
            return
        if hi is None:  # the last range of the phase: move on, atomically with it
            self._move_on(phase)

    def _move_on(self, phase: str) -> None:
        """``phase`` is walked: the job goes on with the next one (or is done)."""
        s = self.state
        s.last_key = None
        if progress.WORKER_SEP not in s.job:
            s.leaf = None  # (a worker's row keeps the partition it walks)
        following = self.phases[self.phases.index(phase) + 1 :]
        s.phase = following[0] if following else DONE
        s.sessions_walked = 0
        if s.phase == CATCHUP:
            s.unmatched_no_ip = s.unmatched_not_in_inventory = 0
        if s.phase == DONE:
            s.finished_at = progress.utcnow()

    def merge_workers(self, workers: list[JobState]) -> None:
        """Every stripe of the workers (:mod:`.workers`) is walked: their counts join the
        job's and the job goes on with its next phase (saved in the transaction that
        deletes their rows)."""
        s = self.state
        self.stripe_batches = {w.job: w.batches for w in workers}
        for w in workers:
            s.batches += w.batches
            s.retries += w.retries
            s.splits += w.splits
            s.rows_updated += w.rows_updated
            s.matched += w.matched
            s.unmatched_no_ip += w.unmatched_no_ip
            s.unmatched_not_in_inventory += w.unmatched_not_in_inventory
        self._move_on(WALK)

    def undone(self, entries: int, changed: int) -> None:
        """A batch of the rollback record was undone: ``entries`` sessions, ``changed``
        of them changed."""
        self.state.batches += 1
        self.state.sessions_walked += entries
        self.state.rows_updated += changed

    def start_phase(self, phase: str) -> None:
        self.phase_now = phase
        self.pace.restart()
        self.phase_total = self.state.sessions_total
        self._phase_started = self.clock()
        self._phase_done_at_start = self.state.sessions_walked
        self._last_log = self.clock()

    def progress(self, phase: str, *, complete: bool = False) -> Progress:
        """Where the job stands; ``complete`` once the phase's last range has committed."""
        total = self.phase_total
        done = total if complete or phase == DONE else min(self.state.sessions_walked, total)
        made = Progress.of(
            self.state,
            self.phases,
            phase=phase,
            done=done,
            walked=done - self._phase_done_at_start,
            elapsed=self.clock() - self._phase_started - self.pace.waited_now(),
            wait_share=self.pace.wait_share(),
            dry_run=self.dry_run,
        )
        return replace(
            made,
            run_state=self.run_state,
            run_detail=self.detail,
            knobs=self.knobs.describe(),
            waits={k: dict(v) for k, v in self.waits.items()},
            workers=list(self.workers),
        )

    # -- the engine's state ----------------------------------------------------------------

    def running(self) -> None:
        """Nothing holds the next batch back (any wait going on ends)."""
        self.pace.end_wait()
        self.run_state, self.detail = control.RUNNING, ""

    def held(self, *, paused: bool, detail: str) -> None:
        """The next batch waits: paused by the operator, or throttled, because ``detail``."""
        self.run_state = control.PAUSED if paused else control.THROTTLED
        self.detail = detail
        self.pace.begin_wait()

    def stopping(self, detail: str) -> None:
        self.run_state, self.detail = control.STOPPING, detail

    def end(self, run_state: str, detail: str = "") -> None:
        """The run ended: ``finished``, ``stopped`` or ``failed`` (with why)."""
        self.pace.end_wait()
        self.run_state, self.detail = run_state, detail

    def count_wait(self, signal: str) -> None:
        """``signal`` holds a batch back: one more wait under its name."""
        counted = self.waits.setdefault(signal, {"waits": 0, "seconds": 0.0})
        counted["waits"] += 1

    def add_waited(self, signal: str, seconds: float) -> None:
        counted = self.waits[signal]
        counted["seconds"] = round(counted["seconds"] + seconds, 3)

    def change_knobs(self, knobs: BackfillKnobs) -> list[str]:
        """The knobs in force from the next batch on; returns what changed."""
        changed = self.knobs.changes(knobs)
        self.knobs = knobs
        return changed

    def columns(self) -> dict[str, Any]:
        """What the engine writes beside its progress: state, knobs, waits, heartbeat."""
        snap = self.progress(self.phase_now)
        info = {
            **control.runner(),
            "backend": self.backend,
            "detail": self.detail,
            "knobs": self.knobs.describe(),
            "waits": self.waits,
            "control_seq_applied": self.applied_seq,
            "rate": snap.rate,
            "eta_seconds": snap.eta_seconds,
            "wait_share": snap.wait_share,
        }
        return {
            "run_state": self.run_state,
            "run_info": json.dumps(info, sort_keys=True),
            "heartbeat_at": utcnow(),
        }

    # -- what it says ----------------------------------------------------------------------

    def write_status(self, snap: Progress | None = None) -> None:
        """Rewrite the status file, if there is one: with ``snap``, or where the job
        stands now (while waiting: its state, not a new batch)."""
        if self.knobs.status_file is not None:
            snap = snap or self.progress(self.phase_now)
            progress.write_status_file(self.knobs.status_file, snap)

    def log_batch(
        self, snap: Progress, size: int | None, seconds: float, *, leaf: str | None, last: bool
    ) -> None:
        """The progress line after a batch (of ``size`` rows, None: the last range), at
        most once per ``log_interval``, and after the ``last`` range of a table."""
        now = self.clock()
        if now - self._last_log < self.knobs.log_interval / 1000 and not last:
            return
        self._last_log = now
        eta = "?" if snap.eta_seconds is None else f"{snap.eta_seconds:.0f} s"
        log.info(
            "%s %s: %d/%d sessions (%.1f%%), %.0f rows/s, ETA %s, %d updated; "
            "batch %d: %s in %.3f s%s",
            self.job,
            snap.phase,
            snap.done,
            snap.total,
            snap.phase_percent,
            snap.rate,
            eta,
            self.state.rows_updated,
            self.state.batches,
            "the last range" if size is None else f"{size} rows",
            seconds,
            f", partition {leaf}" if leaf is not None else "",
        )
