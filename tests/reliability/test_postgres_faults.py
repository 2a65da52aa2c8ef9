"""PostgreSQL faults: the backfill's backend terminated while its UPDATE runs, a row lock
held by another transaction, a ``statement_timeout`` given to the ``alembic`` command."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from cowrieprocessor.backfill import BACKFILL_JOB
from cowrieprocessor.backfill.alembic_ops import BATCH_APPLICATION_NAME
from cowrieprocessor.backfill.progress import DONE
from cowrieprocessor.db.engine import create_engine_from_url
from cowrieprocessor.testing.reliability.datasets import Dataset
from cowrieprocessor.testing.reliability.figures import record
from cowrieprocessor.testing.reliability.outcomes import differences
from cowrieprocessor.testing.runners import Alembic, progress_state, run_alembic
from cowrieprocessor.testing.seed import snapshots


def _slow_updates(engine: sa.Engine, seconds_per_row: float) -> None:
    """A trigger that makes every row the backfill writes cost ``seconds_per_row``."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS "
                f"$$ BEGIN PERFORM pg_sleep({float(seconds_per_row)}); RETURN NEW; END $$"
            )
        )
        conn.execute(
            sa.text(
                "CREATE TRIGGER slow BEFORE UPDATE ON session_summaries "
                "FOR EACH ROW EXECUTE FUNCTION slow()"
            )
        )


@pytest.mark.postgres
def test_backend_terminated_while_its_batch_statement_runs_is_retried(pg_small: Dataset) -> None:
    url = pg_small.clone()
    engine = create_engine_from_url(url)
    _slow_updates(engine, 0.003)  # a batch of 100 rows: 0.3 s inside its UPDATE
    run = Alembic(url, "upgrade", "head", x={"batch_size": "100"})
    killed: list[tuple[int, float]] = []
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        while run.running() and len(killed) < 2:
            row = conn.execute(
                sa.text(
                    "SELECT pid, extract(epoch FROM clock_timestamp() - query_start) "
                    "FROM pg_stat_activity WHERE application_name = :app "
                    "AND wait_event = 'PgSleep' "  # in the trigger: inside the batch's UPDATE
                    "AND clock_timestamp() - query_start > interval '50 ms'"
                ),
                {"app": BATCH_APPLICATION_NAME},
            ).first()
            if row is not None and row[0] not in {pid for pid, _ in killed}:
                assert conn.execute(
                    sa.text("SELECT pg_terminate_backend(:p)"), {"p": row[0]}
                ).scalar()
                killed.append((int(row[0]), float(row[1])))
            time.sleep(0.01)
    rc = run.wait()
    assert rc == 0, run.output
    assert len(killed) == 2, f"only {len(killed)} batch statements were caught running"
    assert len(run.times_of("connection lost, retry")) >= 2, run.output
    got = snapshots(engine)
    assert not differences(got, pg_small.reference)
    assert progress_state(engine, BACKFILL_JOB)[0] == DONE
    engine.dispose()
    record(
        "backend terminated mid-statement",
        dialect="postgresql",
        terminated=len(killed),
        statement_age_at_kill_s=[round(age, 3) for _, age in killed],
        rows_compared=len(got),
        differences=0,
    )


@pytest.mark.postgres
def test_row_lock_released_while_retries_remain_then_the_run_finishes(pg_small: Dataset) -> None:
    url = pg_small.clone()
    engine = create_engine_from_url(url)
    with engine.connect() as conn:
        keys = conn.execute(
            sa.text("SELECT session_id FROM session_summaries ORDER BY 1")
        ).scalars()
        victim = list(keys)[250]
    locker = engine.connect()
    locker.execute(
        sa.text("SELECT 1 FROM session_summaries WHERE session_id = :k FOR UPDATE"), {"k": victim}
    )
    lock_timeout_ms = 300
    run = Alembic(
        url,
        "upgrade",
        "head",
        x={"batch_size": "100", "lock_timeout": f"{lock_timeout_ms}ms", "max_retries": "6"},
    )
    waits: dict[tuple[int, str], float] = {}  # (pid, query_start) -> longest wait seen
    released_at = None
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        while run.running():
            rows = conn.execute(
                sa.text(
                    "SELECT pid, query_start::text, "
                    "extract(epoch FROM clock_timestamp() - query_start) "
                    "FROM pg_stat_activity WHERE application_name = :app "
                    "AND wait_event_type = 'Lock'"
                ),
                {"app": BATCH_APPLICATION_NAME},
            ).all()
            for pid, started, age in rows:
                waits[(pid, started)] = max(waits.get((pid, started), 0.0), float(age))
            if released_at is None and len(waits) >= 2 and not rows:
                locker.rollback()  # two waits have timed out: let the third attempt through
                released_at = time.monotonic()
            time.sleep(0.01)
    rc = run.wait()
    locker.close()
    assert rc == 0, run.output
    assert released_at is not None, f"the backfill never waited twice on the lock:\n{run.output}"
    assert time.monotonic() - released_at < 30
    assert len(run.times_of("lock timeout, retry")) >= 2, run.output
    longest = max(waits.values())
    assert longest < lock_timeout_ms / 1000 + 0.25, f"a wait of {longest:.3f} s"
    got = snapshots(engine)
    assert not differences(got, pg_small.reference)
    assert got[victim][0] is not None  # the locked row was not skipped
    engine.dispose()
    record(
        "row lock released while retries remain",
        dialect="postgresql",
        lock_timeout_ms=lock_timeout_ms,
        lock_waits=len(waits),
        longest_wait_s=round(longest, 3),
        rows_compared=len(got),
        differences=0,
    )


@pytest.mark.postgres
def test_statement_timeout_from_the_alembic_command_splits_ranges_and_completes(
    pg_small: Dataset,
) -> None:
    url = pg_small.clone()
    engine = create_engine_from_url(url)
    _slow_updates(engine, 0.002)  # 100-row batches need 0.2 s: over 100 ms they time out
    out = run_alembic(url, "upgrade", "head", x={"batch_size": "100", "statement_timeout": "100ms"})
    assert out.returncode == 0, out.stderr
    assert "hit statement_timeout (100 ms): splitting it in two" in out.stderr
    splits = int(out.stderr.split("ranges split: ")[1].split()[0])
    assert splits >= 2
    got = snapshots(engine)
    assert not differences(got, pg_small.reference)
    engine.dispose()
    record(
        "statement_timeout via -x",
        dialect="postgresql",
        statement_timeout_ms=100,
        splits=splits,
        rows_compared=len(got),
        differences=0,
    )
