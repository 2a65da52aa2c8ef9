"""``kill -9`` of the ``alembic`` command at random moments, then reruns to the end.

Each trial kills the upgrade, reruns it until it finishes by itself and compares every
row with the uninterrupted run; then does the same for the downgrade, which brings the
database back to where the next trial starts.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import sqlalchemy as sa

from cowrieprocessor.backfill import BACKFILL_JOB, CLEAR_JOB
from cowrieprocessor.backfill.progress import CATCHUP, DONE, PROGRESS_TABLE, WALK
from cowrieprocessor.db.engine import create_engine_from_url
from cowrieprocessor.testing.reliability.datasets import Dataset, Reference
from cowrieprocessor.testing.reliability.figures import SEED, record
from cowrieprocessor.testing.reliability.outcomes import (
    BACKFILL,
    BEFORE,
    HEAD,
    NULLS,
    SNAPSHOT_INDEXES,
    differences,
    invalid_indexes,
    snapshot_indexes,
)
from cowrieprocessor.testing.runners import Alembic, batches_committed, progress_state
from cowrieprocessor.testing.seed import snapshots, version


def landing(engine: sa.Engine, direction: str) -> str:
    """Where in the command a kill landed, from what the database says afterwards."""
    at = version(engine)
    if direction == "upgrade":
        phase = progress_state(engine, BACKFILL_JOB)[0]
        if at == BEFORE:
            return {
                WALK: "upgrade: backfill walk",
                CATCHUP: "upgrade: catch-up pass",
                DONE: "upgrade: backfill done, 0003 not stamped",
            }.get(phase, "upgrade: start-up, before the first batch")
        return "upgrade: 0004 (indexes)" if at == BACKFILL else "upgrade: head stamped"
    phase = progress_state(engine, CLEAR_JOB)[0]
    if at == HEAD:
        return "downgrade: start-up or dropping the indexes (0004)"
    if at == BACKFILL:
        return {
            WALK: "downgrade: clearing batches",
            DONE: "downgrade: clear done, 0002 not stamped",
            "no-table": "downgrade: clear done, 0002 not stamped",
        }.get(phase, "downgrade: before the first clear batch")
    return "downgrade: 0002 stamped"


def run_with_kills(
    url: str,
    args: list[str],
    knobs: Mapping[str, str],
    ref: Reference,
    job: str,
    rng: random.Random,
    kills: int,
) -> list[str]:
    """Start the command and ``kill -9`` it, up to ``kills`` times, then rerun it until it
    finishes by itself. Returns where each kill landed.

    Each kill is aimed at random, one way or the other with equal odds: at a moment after
    the run's first batch commits, drawn from the span in which the uninterrupted run had
    batches running (stretched by a tenth, so that some fall on the DDL or the stamping
    after them); or just after a random batch still to come commits, then 0-30 ms later,
    inside the next one. Both are measured from the run's own progress, so a slow start
    (a busy machine) does not move them.
    """
    engine = create_engine_from_url(url)
    direction = args[0]
    landed: list[str] = []
    try:
        while True:
            done = batches_committed(engine, job)
            run = Alembic(url, *args, x=knobs)
            if len(landed) < kills:
                if rng.random() < 0.5 or done + 1 >= ref.batches:
                    batch, delay = done + 1, rng.uniform(0.0, 1.1 * (ref.last - ref.first))
                else:
                    batch, delay = rng.randint(done + 1, ref.batches), rng.uniform(0.0, 0.03)
                if run.kill_after(engine, job, batch, delay):
                    landed.append(landing(engine, direction))
                    continue
            rc = run.wait()
            assert rc == 0, f"seed {SEED}: rerun after kills at {landed} failed:\n{run.output}"
            return landed
    finally:
        engine.dispose()


def kill_trial(
    ds: Dataset,
    url: str,
    rng: random.Random,
    max_kills: int,
    name: str,
    knobs: Mapping[str, str] | None = None,
) -> list[str]:
    """The upgrade killed at random moments and rerun to the end, compared with the
    uninterrupted run; then the same for the downgrade, which brings the database back
    to where the next trial starts. Returns where the kills landed. ``knobs``: the
    upgrade's (default: the dataset's)."""
    engine = create_engine_from_url(url)
    kills_up, kills_down = rng.randint(1, max_kills), rng.randint(1, max_kills)
    knobs = ds.knobs if knobs is None else knobs
    up = run_with_kills(url, ["upgrade", "head"], knobs, ds.up, BACKFILL_JOB, rng, kills_up)
    diff = differences(snapshots(engine), ds.reference)
    assert not diff, f"{name} kills {up}: {len(diff)} rows differ, e.g. {diff[:5]}"
    assert version(engine) == HEAD
    assert snapshot_indexes(engine) == SNAPSHOT_INDEXES
    assert invalid_indexes(engine) == 0, f"{name}: an INVALID index is left"
    down = run_with_kills(url, ["downgrade", BEFORE], ds.knobs, ds.down, CLEAR_JOB, rng, kills_down)
    diff = differences(snapshots(engine), dict.fromkeys(ds.reference, NULLS))
    assert not diff, f"{name} kills {down}: {len(diff)} rows not cleared, e.g. {diff[:5]}"
    assert version(engine) == BEFORE
    assert not snapshot_indexes(engine)
    assert not sa.inspect(engine).has_table(PROGRESS_TABLE)
    engine.dispose()
    return up + down


# The workers of each lane's upgrades on PostgreSQL (SQLite has one writer): one, two
# and four connections walking stripes at once, killed and resumed alike.
LANE_WORKERS = ("1", "2", "4")


def kill_trials(
    ds: Dataset, trials: int, max_kills: int, test: str, knobs: Mapping[str, str] | None = None
) -> None:
    """``trials`` kill trials in three lanes side by side (three databases): most of a
    trial is spent starting Python. Each lane has its own seeded random generator and,
    on PostgreSQL, its own number of workers (:data:`LANE_WORKERS`; on a partitioned
    table a stripe is a partition). ``knobs``: the upgrade's, over the dataset's."""
    more = dict(knobs or {})
    lanes = [ds.rerun, ds.clone(), ds.clone()]

    def lane(n: int) -> list[str]:
        rng = random.Random(f"{SEED}-{ds.dialect}-{test}-{n}")
        workers = LANE_WORKERS[n] if ds.dialect == "postgresql" else "1"
        knobs = {**ds.knobs, **more, "workers": workers}
        landed: list[str] = []
        for trial in range(n, trials, len(lanes)):
            name = f"seed {SEED} trial {trial} (workers={workers})"
            landed += kill_trial(ds, lanes[n], rng, max_kills, name, knobs)
        return landed

    with ThreadPoolExecutor(len(lanes)) as pool:
        landed = [where for done in pool.map(lane, range(len(lanes))) for where in done]
    rows = 2 * trials * len(ds.reference)  # after each upgrade and each downgrade
    record(
        test,
        dialect=ds.dialect,
        partition=ds.partition,
        seed=SEED,
        sessions=ds.sessions,
        knobs={**ds.knobs, **more},
        workers=list(LANE_WORKERS) if ds.dialect == "postgresql" else ["1"],
        trials=trials,
        kills=len(landed),
        kills_landed=dict(sorted(Counter(landed).items())),
        rows_compared=rows,
        columns_compared=rows * 5,
        differences=0,
        batches_per_upgrade=ds.up.batches,
        upgrade_batches_ran_s=[round(ds.up.first, 2), round(ds.up.last, 2)],
        downgrade_batches_ran_s=[round(ds.down.first, 2), round(ds.down.last, 2)],
    )
