"""The jobs: backfill, clear everything, undo the backfill; their results and summary.

Each job is a :class:`~.walker.RangeWalker` given one statement per range (from
:mod:`.ranges`; for the undo, the rollback record). A job starts by taking the claim and
loading or starting its state (:func:`_prepare`), walks, and sums up. See the package
docstring for what the backfill does and in which order.

Why one module of ~470 lines: the three jobs share that preparation, the claim and the
result they log, and each is short; the walk is :mod:`.walker`, the statements
:mod:`.ranges`, the workers :mod:`.workers`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

from sqlalchemy import Connection, Engine

from cowrieprocessor.backfill import (
    blocks,
    checkpoints,
    control,
    deferred_indexes,
    json_storage,
    progress,
    rollback_record,
    workers,
)
from cowrieprocessor.backfill.governor import describe_waits, discard_commands
from cowrieprocessor.backfill.knobs import BackfillKnobs, KnobError, show_bytes
from cowrieprocessor.backfill.progress import CATCHUP, DONE, WALK, JobState, percentile
from cowrieprocessor.backfill.ranges import (
    CTID,
    KEY,
    backfill_range,
    clear_range,
    join_back_mode,
    table_counts,
)
from cowrieprocessor.backfill.sizing import describe_sizing
from cowrieprocessor.backfill.statistics import analyze_blind_tables
from cowrieprocessor.backfill.walker import BatchReport, RangeWalker, RunRange
from cowrieprocessor.db import partitions

log = logging.getLogger("cowrieprocessor.backfill")
T = TypeVar("T")

BACKFILL_JOB = "snapshot_backfill"
CLEAR_JOB = "snapshot_clear"  # the downgrade of 0003
CLEAR_ALL_JOB = "snapshot_clear_all"  # cowrie-db clear --all
# Each job's phases, in order: the catch-up pass re-walks what the walk may have missed.
JOB_PHASES: dict[str, tuple[str, ...]] = {
    BACKFILL_JOB: (WALK, CATCHUP),
    CLEAR_JOB: (WALK,),
    CLEAR_ALL_JOB: (WALK,),
}


@dataclass
class BackfillResult:
    job: str
    dry_run: bool
    sessions_total: int
    needing_snapshots: int  # lacking a snapshot column when this run's walk reached them
    inventory_size: int
    rows_updated: int
    matched: int
    unmatched_no_ip: int
    unmatched_not_in_inventory: int
    batches: int
    retries: int
    splits: int
    seconds: float
    resumed: bool
    batch_seconds: list[float] = field(default_factory=list)
    # times and seconds each signal held batches back: paused, replica_lag, wal_rate
    waits: dict[str, dict[str, float]] = field(default_factory=dict)
    # WAL written from the first batch to the end, and over how many seconds (PostgreSQL,
    # when a health signal is on)
    wal_bytes: int | None = None
    wal_seconds: float | None = None
    # with workers: each stripe's row and the batches it took (this run's and earlier)
    stripes: dict[str, int] = field(default_factory=dict)
    # checkpoints the server was asked for while the run wrote (PostgreSQL)
    checkpoints_requested: checkpoints.Checkpoints | None = None

    @property
    def rate(self) -> float:
        return self.sessions_total / self.seconds if self.seconds > 0 else 0.0


def _resuming(walker: RangeWalker) -> str:
    s = walker.run.state
    if s.phase == WALK and s.last_key is None and s.batches == 0:
        return "; resuming the walk's stripes"  # the workers' (:mod:`.workers`)
    plan = blocks.BlockPlan.decode(s.walk_plan)
    if plan is not None and s.last_key is not None and blocks.owns(s.last_key):
        return f"; resuming walk by blocks at {plan.at(blocks.cell_of(s.last_key))}"
    return f"; resuming {s.phase}{_in_leaf(walker)} after {s.last_key!r}"


def _in_leaf(walker: RangeWalker) -> str:
    leaf = walker.run.state.leaf
    return f" in partition {leaf}" if leaf is not None and walker.run.leaves else ""


def _reading(read: Callable[[Connection], T]) -> Callable[[Connection], T]:
    """``read``, then the end of the read transaction it opened (for ``walker.tx.retrying``)."""

    def run(conn: Connection) -> T:
        found = read(conn)
        conn.rollback()
        return found

    return run


def _ensure_record(conn: Connection, backfilled_before: bool) -> None:
    """Create the rollback record; a database backfilled before it existed (a progress
    row of the backfill, no record) gets a marker row that makes a downgrade clear all."""
    if rollback_record.exists(conn):
        return
    rollback_record.ensure_table(conn)
    if backfilled_before:
        rollback_record.mark_incomplete(conn)


def _prepare(
    walker: RangeWalker, fresh_job_to_delete: str | None = None, *, with_record: bool = False
) -> bool:
    """Take the claim, then load or start the job's state (and, ``with_record``, create
    the rollback record). Returns True when resuming an unfinished run.

    All in one transaction, the claim first: a job refused because another one runs
    has written nothing. The job's row is written at once (with the engine's state, any
    command an earlier run left discarded): from here on ``status`` shows it, ``control``
    can steer it, and on SQLite it is the claim (:class:`~.control.RowClaim`).
    """

    def resumable(saved: JobState | None) -> JobState | None:
        return saved if saved is not None and saved.phase != DONE else None

    run, tx = walker.run, walker.tx
    leaves = tx.retrying("reading the partitions of session_summaries", _reading(partitions.leaves))
    run.found_leaves(leaves)
    if leaves is not None:
        log.info(
            "session_summaries is partitioned: %d leaf partition(s), walked one after the other",
            len(leaves),
        )

    def setup(conn: Connection) -> JobState | None:
        with tx.begin(conn):
            tx.take_claim(conn)
            progress.ensure_table(conn)
            if fresh_job_to_delete:
                progress.delete(conn, fresh_job_to_delete)
                progress.delete_workers(conn, fresh_job_to_delete)
            saved = progress.load(conn, run.job)
            if with_record:
                _ensure_record(conn, backfilled_before=saved is not None)
            if resumable(saved) is None:  # a fresh start: no stripe of an earlier walk
                progress.delete_workers(conn, run.job)
            run.resume(resumable(saved))
            discard_commands(conn, run.job)
            progress.save(conn, run.state, run.columns())
            return saved

    if run.dry_run:

        def peek(conn: Connection) -> JobState | None:
            tx.take_claim(conn)  # a dry run writes nothing: it only looks
            state = progress.load(conn, run.job)
            conn.commit()
            return state

        tx.retrying("reading the progress table", peek)
        run.resume(None)
        analyze_blind_tables(tx, run)
        return False
    unfinished = resumable(tx.retrying("preparing the progress table", setup))
    analyze_blind_tables(tx, run)
    if unfinished is None:
        return False
    if unfinished.batches > 0 or unfinished.phase != WALK:
        return True
    # a walk with workers keeps its batches in its stripes' rows (:mod:`.workers`)
    return bool(tx.retrying("reading the workers' stripes", workers.saved_stripes(run.job)))


def run_backfill(
    engine: Engine,
    knobs: BackfillKnobs,
    *,
    dry_run: bool = False,
    stop: threading.Event | None = None,
    on_batch: Callable[[BatchReport], None] | None = None,
    keep_record: bool = True,
) -> BackfillResult:
    """Fill the five snapshot columns of every session that lacks them. See module doc.

    ``keep_record=False`` leaves out the rollback record (:mod:`.record`); only the
    benchmarks use it, to measure what the record costs.
    Raises :class:`BatchFailed` (a range failed for good), :class:`BackfillInterrupted`
    (``stop`` was set), :class:`~cowrieprocessor.errors.IncompatibleSchema` (a JSON
    column of a type the backfill cannot read).
    """
    # A dry run walks once: without writes, a catch-up pass would only count twice.
    phases = (WALK,) if dry_run else JOB_PHASES[BACKFILL_JOB]
    workers.check_dialect(knobs, engine.dialect.name)
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
    with walker:
        walker.tx.retrying(
            "checking defer_indexes",
            _reading(lambda c: deferred_indexes.check(knobs.defer_indexes, c)),
        )
        mode = CTID
        if walker.dialect == "postgresql":
            mode = walker.tx.retrying(
                "looking for the citus extension", _reading(lambda c: join_back_mode(c, knobs))
            )
        if knobs.walk_order != "key":
            by_key = mode == KEY
            chosen = walker.tx.retrying(
                "checking walk_order",
                _reading(lambda c: _choose_blocks(c, knobs.walk_order, by_key, keep_record)),
            )
            walker.choose_blocks(chosen)
            if chosen and dry_run:
                log.info("a dry run walks by session_id; the backfill walks by blocks here")
        json = walker.tx.retrying("reading the JSON columns' types", _reading(json_storage.detect))
        resumed = _prepare(walker, with_record=keep_record and not dry_run)
        total, inventory = walker.tx.retrying("counting sessions", table_counts)
        walker.run.count_sessions(total)
        s = walker.run.state
        log.info(
            "%sbackfill: %d sessions, %d IPs in inventory; %s%s",
            "DRY RUN (no changes) - " if dry_run else "",
            total,
            inventory,
            describe_sizing(knobs, "block" if walker.by_blocks else walker.fresh_order.name),
            _resuming(walker) if resumed else "",
        )
        if walker.dialect == "postgresql":
            log.info("JSON columns: %s", json.describe())
            log.info("join-back: by %s", "session_id" if mode == KEY else "ctid")
        run_range = backfill_range(
            walker.dialect, dry_run, json, BACKFILL_JOB if keep_record else None, mode
        )
        if not dry_run:
            deferred_indexes.announce(_deferred(walker), engine.dialect)
        elif knobs.defer_indexes:
            log.info("a dry run drops no index (defer_indexes=on)")
        counted_from = _checkpoints_now(walker)
        with _saying_what_stays_deferred(engine, dry_run):
            if knobs.defer_indexes and not dry_run and walker.run.state.phase == WALK:
                deferred_indexes.defer(engine)
            for phase in phases:
                if walker.run.state.phase != phase:
                    continue
                if phase == WALK and _in_parallel(walker, engine, run_range, on_batch):
                    continue  # walked by the workers, and moved on to the catch-up
                walker.walk(phase, run_range)
        if not dry_run:
            deferred_indexes.restore(engine, _deferred(walker))
        counted_to = _checkpoints_now(walker)
    s = walker.run.state
    result = BackfillResult(
        job=BACKFILL_JOB,
        dry_run=dry_run,
        sessions_total=total,
        needing_snapshots=walker.run.walk_candidates,
        inventory_size=inventory,
        rows_updated=s.rows_updated,
        matched=s.matched,
        unmatched_no_ip=s.unmatched_no_ip,
        unmatched_not_in_inventory=s.unmatched_not_in_inventory,
        batches=s.batches,
        retries=s.retries,
        splits=s.splits,
        seconds=time.monotonic() - started,
        resumed=resumed,
        batch_seconds=walker.run.batch_seconds,
        waits=walker.run.waits,
        stripes=walker.run.stripe_batches,
    )
    wal = walker.governor.wal_written()
    if wal is not None:
        result.wal_bytes, result.wal_seconds = wal[0], round(wal[1], 3)
    if counted_from is not None and counted_to is not None:
        result.checkpoints_requested = checkpoints.Checkpoints.between(
            counted_from[1], counted_to[1], counted_to[0] - counted_from[0]
        )
    log_summary(result)
    return result


def _choose_blocks(conn: Connection, walk_order: str, by_key: bool, keep_record: bool) -> bool:
    """Whether a fresh walk goes by blocks: ``walk_order=blocks`` where it can walk,
    else refused by name before any write; ``auto`` where it can, else by key, saying
    why (not on SQLite, which walks its own order). ``by_key``: the join-back's mode."""
    why = blocks.refusal(conn, by_key, keep_record)
    if why and walk_order == "blocks":
        raise KnobError(blocks.insisted(why))
    if why and conn.dialect.name == "postgresql":
        log.info("walk order: by session_id (walk_order=auto: %s)", why)
    return not why


def _checkpoints_now(walker: RangeWalker) -> tuple[float, checkpoints.Reading] | None:
    """When, and the server's checkpoint count and settings (None on SQLite)."""
    found = walker.tx.retrying("counting checkpoints", _reading(checkpoints.read))
    return None if found is None else (time.monotonic(), found)


def _deferred(walker: RangeWalker) -> list[deferred_indexes.Index]:
    """The indexes the ledger lists as deferred, read on the job's own connection."""
    read = _reading(deferred_indexes.pending)
    found: list[deferred_indexes.Index] = walker.tx.retrying("reading the deferred indexes", read)
    return found


@contextmanager
def _saying_what_stays_deferred(engine: Engine, dry_run: bool) -> Iterator[None]:
    """A walk that ends early (stopped, failed) leaves the deferred indexes dropped
    until a run finishes: say which, and how to get them back."""
    try:
        yield
    except BaseException:
        if not dry_run and engine.dialect.name == "postgresql":
            try:
                with engine.connect() as conn:
                    left = deferred_indexes.pending(conn)
            except Exception:  # the database is gone: the error being raised says so
                left = []
            if left:
                log.warning(
                    "defer_indexes: %s stay dropped until the backfill finishes; rerun it "
                    "(`alembic upgrade head`, or `cowrie-db backfill`) to finish and rebuild "
                    "them",
                    ", ".join(i.describe(engine.dialect) for i in left),
                )
        raise


def _in_parallel(
    walker: RangeWalker,
    engine: Engine,
    run_range: RunRange,
    on_batch: Callable[[BatchReport], None] | None,
) -> bool:
    """The walk with workers (:mod:`.workers`), when the knob asks for more than one or
    an earlier run's stripes are saved; False: one walker walks."""
    if walker.dialect != "postgresql" or walker.dry_run:
        if walker.dry_run and walker.knobs.workers > 1:
            log.info(
                "a dry run walks with one connection (workers=%s)", walker.knobs.show_workers()
            )
        return False
    return workers.Stripes(walker, engine, run_range, on_batch).walk(walker.run.leaves)


def _one_worker(job: str, knobs: BackfillKnobs, dialect: str) -> None:
    """The clear and the undo walk with one connection: say so when more were asked."""
    workers.check_dialect(knobs, dialect)
    if knobs.workers > 1 or knobs.workers_per_leaf:
        log.info("%s walks with one connection (workers=%s)", job, knobs.show_workers())


def log_summary(r: BackfillResult) -> None:
    verb = "would update" if r.dry_run else "updated"
    log.info("=" * 60)
    log.info(
        "Backfill %s: %s %d sessions of %d (%d lacked a snapshot column when the %swalk "
        "reached them)",
        "dry run complete" if r.dry_run else "complete",
        verb,
        r.rows_updated,
        r.sessions_total,
        r.needing_snapshots,
        "resumed " if r.resumed else "",
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
    log.info("Batches: %d, retries: %d, ranges split: %d", r.batches, r.retries, r.splits)
    if r.stripes:
        log.info(
            "Workers' stripes: %s",
            ", ".join(f"{job} {n} batches" for job, n in sorted(r.stripes.items())),
        )
    log.info(
        "Batch time: p50 %.3f s, p95 %.3f s, max %.3f s",
        percentile(r.batch_seconds, 0.5),
        percentile(r.batch_seconds, 0.95),
        max(r.batch_seconds, default=0.0),
    )
    log.info("Total time: %.1f s, average rate: %.0f sessions/s", r.seconds, r.rate)
    log.info("Held back: %s", describe_waits(r.waits))
    if r.wal_bytes is not None and r.wal_seconds:
        log.info(
            "WAL written: %s in %.1f s (%s/s)",
            show_bytes(r.wal_bytes),
            r.wal_seconds,
            show_bytes(r.wal_bytes / r.wal_seconds),
        )
    if r.checkpoints_requested is not None:
        log.info("Checkpoints requested while it ran: %s", r.checkpoints_requested.describe())
        if r.checkpoints_requested.too_frequent:
            log.warning(r.checkpoints_requested.warning())
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
    _one_worker(job, knobs, engine.dialect.name)
    walker = RangeWalker(engine, knobs, job=job, stop=stop)
    started = time.monotonic()
    with walker:
        resumed = _prepare(walker, fresh_job_to_delete=BACKFILL_JOB)
        total, _inventory = walker.tx.retrying("counting sessions", table_counts)
        walker.run.count_sessions(total)
        log.info(
            "clearing all snapshot values: %d sessions; %s%s",
            total,
            describe_sizing(knobs, walker.fresh_order.name),
            f"; resuming after {walker.run.state.last_key!r}" if resumed else "",
        )
        if walker.run.state.phase == WALK:
            walker.walk(WALK, clear_range)
        walker.tx.retrying("emptying the rollback record", _forget_record)
        if drop_progress_table:
            walker.tx.retrying("dropping the progress table", _drop_progress)
        deferred_indexes.restore(engine, _deferred(walker))
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
    _one_worker(CLEAR_JOB, knobs, engine.dialect.name)
    with engine.connect() as conn:
        exact = rollback_record.exists(conn) and not rollback_record.is_incomplete(conn)
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
    with walker:
        resumed = _prepare(walker, fresh_job_to_delete=BACKFILL_JOB)
        rows, sessions = walker.tx.retrying(
            "reading the rollback record", _reading(rollback_record.pending)
        )
        walker.run.count_sessions(walker.run.state.sessions_walked + sessions)
        log.info(
            "undoing the backfill: %d recorded sessions in %d batches%s",
            sessions,
            rows,
            " (resuming)" if resumed else "",
        )
        walker.undo_recorded()
        walker.tx.retrying("dropping the progress and record tables", _drop_progress)
        deferred_indexes.restore(engine, _deferred(walker))
    return _log_cleared(walker, started)


def _log_cleared(walker: RangeWalker, started: float) -> ClearResult:
    seconds = time.monotonic() - started
    log.info(
        "Cleared snapshot values in %d rows, %d batches, %.1f s; held back: %s",
        walker.run.state.rows_updated,
        walker.run.state.batches,
        seconds,
        describe_waits(walker.run.waits),
    )
    return ClearResult(walker.run.state.rows_updated, walker.run.state.batches, seconds)


def _forget_record(conn: Connection) -> None:
    with conn.begin():
        rollback_record.forget_all(conn)


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
        # the revision that calls this must not index and stamp head beside a job
        # that is still writing (a `cowrie-db backfill` or `clear` started by hand)
        control.refuse_if_running(conn)
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
        rollback_record.drop_table(conn)
