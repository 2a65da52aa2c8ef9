"""Parallel workers (PostgreSQL): the same result as one walker, stripes that cover every
key once, every stripe resumed after an interruption, one governor for all of them, and
SQLite refusing by name. The kill -9 trials with workers are in tests/reliability.
"""

from __future__ import annotations

import re
import threading
from typing import Any

import pytest
import sqlalchemy as sa

from cowrieprocessor.backfill import (
    BACKFILL_JOB,
    CLEAR_ALL_JOB,
    BackfillKnobs,
    KnobError,
    clear_snapshots,
    run_backfill,
)
from cowrieprocessor.backfill import stripes as stripes_module
from cowrieprocessor.backfill.alembic_ops import BATCH_APPLICATION_NAME
from cowrieprocessor.backfill.errors import BackfillInterrupted
from cowrieprocessor.backfill.progress import PROGRESS_TABLE, JobState, load, load_workers
from cowrieprocessor.backfill.walker import BatchReport
from cowrieprocessor.testing.databases import Databases
from cowrieprocessor.testing.partitioned import HASH, KINDS
from cowrieprocessor.testing.runners import (
    Alembic,
    batches_committed,
    cowrie_db,
    run_alembic,
    wait_for_heartbeats,
)
from cowrieprocessor.testing.seed import at_0002, partitioned_at_0002, seed_random, snapshots

pytestmark = pytest.mark.postgres
SESSIONS, IPS = 3000, 300


def seeded(dbs: Databases, kind: str | None = None) -> sa.Engine:
    url = dbs.new()
    engine = partitioned_at_0002(url, kind) if kind else at_0002(url)
    with engine.begin() as conn:
        seed_random(conn, SESSIONS, IPS, spread_days=400)
    return engine


def counts(result: Any) -> tuple[int, ...]:
    return (
        result.rows_updated,
        result.matched,
        result.unmatched_no_ip,
        result.unmatched_not_in_inventory,
    )


def progress_rows(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return sorted(conn.execute(sa.text(f"SELECT job FROM {PROGRESS_TABLE}")).scalars())


@pytest.mark.parametrize("kind", [None, *KINDS], ids=["plain", *KINDS])
def test_workers_write_what_one_walker_writes(pg_databases: Databases, kind: str | None) -> None:
    one, many = seeded(pg_databases, kind), seeded(pg_databases, kind)
    single = run_backfill(one, BackfillKnobs(batch_size=200))
    workers = "auto" if kind else "3"
    seen: list[BatchReport] = []
    knobs = BackfillKnobs.from_sources({"batch_size": "200", "workers": workers}, {})
    parallel = run_backfill(many, knobs, on_batch=seen.append)

    assert snapshots(many) == snapshots(one)
    assert counts(parallel) == counts(single)
    assert parallel.rows_updated > 0
    # each worker's batches were reported as the job's, with every worker's stripe
    assert {r.job for r in seen} == {BACKFILL_JOB}
    stripes = {w["worker"] for r in seen for w in r.progress.workers}
    assert len(stripes) >= 2
    assert all(name.startswith(BACKFILL_JOB + "/") for name in stripes)
    walked = [r.progress for r in seen if r.phase == "walk"]
    assert all(p.total == SESSIONS for p in walked)  # the job's, not a stripe's
    assert walked[-1].done >= SESSIONS * 0.9
    # the stripes' rows were merged into the job's, which is done
    assert progress_rows(many) == [BACKFILL_JOB]
    assert sorted(parallel.stripes) == sorted(stripes)  # the summary counts each one's
    assert sum(parallel.stripes.values()) + 1 <= parallel.batches  # and the catch-up's
    with many.connect() as conn:
        state = load(conn, BACKFILL_JOB)
    assert state is not None and state.phase == "done"
    assert state.rows_updated == parallel.rows_updated
    one.dispose()
    many.dispose()


def test_stripes_cover_every_key_once(pg_databases: Databases) -> None:
    engine = seeded(pg_databases)
    with engine.begin() as conn:
        conn.execute(sa.text("ANALYZE session_summaries"))
    with engine.connect() as conn:
        stripes = stripes_module.plan(conn, JobState(job=BACKFILL_JOB), None, 4)
        per_stripe = [
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM session_summaries WHERE "
                    "(CAST(:lo AS text) IS NULL OR session_id > :lo) AND "
                    "(CAST(:hi AS text) IS NULL OR session_id <= :hi)"
                ),
                {"lo": s.stripe_lo, "hi": s.stripe_hi},
            ).scalar_one()
            for s in stripes
        ]
    assert len(stripes) == 4
    assert sum(per_stripe) == SESSIONS
    # quantiles of the histogram: each stripe holds about a quarter of the keys
    assert all(abs(n - SESSIONS / 4) < SESSIONS / 8 for n in per_stripe), per_stripe
    engine.dispose()


def test_stripes_without_statistics_come_from_a_sample(pg_databases: Databases) -> None:
    engine = seeded(pg_databases)
    with engine.connect() as conn:
        bounds, source = stripes_module.quantiles(conn, None, 3)
        conn.rollback()
    assert "sample" in source  # freshly seeded: no histogram yet
    assert len(bounds) == 2 and bounds[0] < bounds[1]
    engine.dispose()


def test_a_stopped_run_with_workers_resumes_every_stripe(pg_databases: Databases) -> None:
    reference, engine = seeded(pg_databases), seeded(pg_databases)
    run_backfill(reference, BackfillKnobs(batch_size=100))
    stop = threading.Event()
    batches: list[int] = []

    def stop_after_some(report: BatchReport) -> None:
        batches.append(report.batch)
        if len(batches) == 6:
            stop.set()

    knobs = BackfillKnobs.from_sources({"batch_size": "100", "workers": "3"}, {})
    with pytest.raises(BackfillInterrupted, match="rerun to resume"):
        run_backfill(engine, knobs, stop=stop, on_batch=stop_after_some)
    with engine.connect() as conn:
        saved = load_workers(conn, BACKFILL_JOB)
    assert len(saved) == 3
    assert sum(s.batches for s in saved) >= 6
    assert all(s.phase == "walk" for s in saved)  # none had walked its whole stripe
    positions = {s.job: s.last_key for s in saved}

    # resumed with one worker: the same stripes, each from where it stopped
    resumed = run_backfill(engine, BackfillKnobs(batch_size=100))
    assert resumed.resumed
    assert snapshots(engine) == snapshots(reference)
    assert all(key is not None for key in positions.values())
    assert progress_rows(engine) == [BACKFILL_JOB]
    reference.dispose()
    engine.dispose()


def test_workers_are_refused_on_sqlite_by_name(sqlite_databases: Databases) -> None:
    url = sqlite_databases.new()
    engine = at_0002(url)
    with engine.begin() as conn:
        seed_random(conn, 50, 10)
    knobs = BackfillKnobs.from_sources({"workers": "2"}, {})
    with pytest.raises(KnobError, match=r"workers=2: SQLite lets one connection write"):
        run_backfill(engine, knobs)
    before = snapshots(engine)
    out = run_alembic(url, "upgrade", "head", x={"workers": "2"})
    assert out.returncode == 2, out.stderr
    assert "workers=2: SQLite" in out.stderr
    assert "Traceback" not in out.stderr
    cli = cowrie_db("backfill", "--db", url, "--workers", "auto")
    assert cli.returncode == 2, cli.stderr
    assert "workers=auto:4: SQLite" in cli.stderr
    assert snapshots(engine) == before  # nothing written
    with engine.connect() as conn:
        assert not sa.inspect(conn).has_table(PROGRESS_TABLE)
    engine.dispose()


@pytest.mark.parametrize("bad", ["0", "65", "two", "auto:0", "3:4", ""])
def test_a_bad_workers_value_is_refused_by_name(bad: str) -> None:
    with pytest.raises(KnobError, match=r"workers=.* is not a number of workers; allowed: 1\.\.64"):
        BackfillKnobs.from_sources({"workers": bad}, {})


def test_auto_is_one_worker_on_a_plain_table(pg_databases: Databases) -> None:
    engine = seeded(pg_databases, None)
    knobs = BackfillKnobs.from_sources({"batch_size": "500", "workers": "auto"}, {})
    seen: list[BatchReport] = []
    run_backfill(engine, knobs, on_batch=seen.append)
    assert seen and all(not r.progress.workers for r in seen)
    assert progress_rows(engine) == [BACKFILL_JOB]
    engine.dispose()


def test_auto_on_hash_partitions_walks_one_leaf_per_worker(pg_databases: Databases) -> None:
    engine = seeded(pg_databases, HASH)
    knobs = BackfillKnobs.from_sources({"batch_size": "200", "workers": "auto:2"}, {})
    seen: list[BatchReport] = []
    run_backfill(engine, knobs, on_batch=seen.append)
    last = [r for r in seen if r.phase == "walk"][-1].progress.workers
    assert all(w["stripe"].startswith("partition ") for w in last), last
    assert len({w["stripe"] for w in last}) == len(last) >= 2
    engine.dispose()


def test_one_governor_pauses_every_worker_and_status_shows_each(pg_databases: Databases) -> None:
    reference, engine = seeded(pg_databases), seeded(pg_databases)
    run_backfill(reference, BackfillKnobs(batch_size=100))
    url = engine.url.render_as_string(hide_password=False)
    run = Alembic(url, "upgrade", "head", x={"batch_size": "50", "pause_ms": "100", "workers": "3"})
    try:
        assert run.wait_for_batches(engine, BACKFILL_JOB, 6), run.output
        paused = cowrie_db("--db", url, "control", "pause")
        assert paused.returncode == 0, paused.stdout + paused.stderr
        # the gate is closed at the first heartbeat after the pause; a batch in flight
        # then commits within milliseconds
        wait_for_heartbeats(engine, BACKFILL_JOB, 2)
        held = batches_committed(engine, BACKFILL_JOB)
        wait_for_heartbeats(engine, BACKFILL_JOB, 2)
        assert batches_committed(engine, BACKFILL_JOB) == held, "a worker's batch committed"
        # the job's connection and three workers' at once (the revision's pool has room)
        with engine.connect() as conn:
            backends = conn.execute(
                sa.text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :name"),
                {"name": BATCH_APPLICATION_NAME},
            ).scalar_one()
        assert backends == 4, backends
        status = cowrie_db("--db", url, "status")
        assert "state: paused (paused by operator since" in status.stdout, status.stdout
        assert "workers (3 stripes):" in status.stdout, status.stdout
        for n in (1, 2, 3):
            stripe = rf"{BACKFILL_JOB}/0{n}: blocks \[\d+, \d+\) of \d+, walk"
            assert re.search(stripe, status.stdout), status.stdout
        assert cowrie_db("--db", url, "control", "set", "pause_ms=0").returncode == 0
        assert cowrie_db("--db", url, "control", "resume").returncode == 0
        assert run.wait() == 0, run.output
    finally:
        if run.running():
            run.kill()
    assert "walking 3 stripe(s) with 3 worker(s) (workers=3)" in run.output
    assert re.search(r"Held back: paused 1 time\(s\), [1-9]\d*\.\d s", run.output), run.output
    assert snapshots(engine) == snapshots(reference)
    reference.dispose()
    engine.dispose()


def test_stripes_follow_partitions_gone_or_attached_between_runs(
    pg_databases: Databases, caplog: pytest.LogCaptureFixture
) -> None:
    engine = seeded(pg_databases, HASH)
    stop = threading.Event()
    knobs = BackfillKnobs.from_sources({"batch_size": "50", "workers": "auto:2"}, {})
    with pytest.raises(BackfillInterrupted):
        run_backfill(engine, knobs, stop=stop, on_batch=lambda r: stop.set())
    with engine.connect() as conn:
        waiting = [s for s in load_workers(conn, BACKFILL_JOB) if s.batches == 0]
    gone = waiting[-1].leaf
    assert gone is not None
    with engine.begin() as conn:  # a partition not walked yet is dropped
        conn.execute(sa.text(f'DROP TABLE "{gone}"'))
    caplog.set_level("WARNING", logger="cowrieprocessor.backfill")
    run_backfill(engine, knobs)
    assert f"partition {gone} is gone: its stripe is skipped" in caplog.text
    with engine.connect() as conn:
        missing = conn.execute(
            sa.text("SELECT count(*) FROM session_summaries WHERE source_ip IS NULL")
        ).scalar_one()
    assert missing < SESSIONS * 0.05  # every partition left was walked
    assert progress_rows(engine) == [BACKFILL_JOB]
    engine.dispose()


def test_a_clear_forgets_the_stripes_of_a_stopped_run_with_workers(
    pg_databases: Databases,
) -> None:
    engine = seeded(pg_databases)
    stop = threading.Event()
    knobs = BackfillKnobs.from_sources({"batch_size": "100", "workers": "2"}, {})
    with pytest.raises(BackfillInterrupted):
        run_backfill(engine, knobs, stop=stop, on_batch=lambda r: stop.set())
    with engine.connect() as conn:
        assert len(load_workers(conn, BACKFILL_JOB)) == 2
    clear_snapshots(engine, BackfillKnobs(batch_size=500))
    assert progress_rows(engine) == [CLEAR_ALL_JOB]
    # the next backfill starts afresh, and fills every session
    result = run_backfill(engine, BackfillKnobs(batch_size=500))
    assert not result.resumed
    with engine.connect() as conn:
        filled = conn.execute(
            sa.text("SELECT count(*) FROM session_summaries WHERE source_ip IS NOT NULL")
        ).scalar_one()
    assert filled == result.matched > 0
    engine.dispose()
