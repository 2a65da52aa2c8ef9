"""PostgreSQL DDL of the revisions never queues the loader behind it for long."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from cowrieprocessor.db.adoption import CK_NAME, FK_NAME
from cowrieprocessor.db.engine import create_engine_from_url
from tests.helpers import run_alembic
from tests.seed import migrate


@pytest.mark.postgres
def test_ddl_gives_up_the_lock_queue_after_lock_timeout_and_retries(pg_url: str) -> None:
    migrate(pg_url, "0001_baseline")
    engine = create_engine_from_url(pg_url)
    holder = engine.connect()
    holder.execute(sa.text("SELECT count(*) FROM session_summaries"))  # ACCESS SHARE, held

    waited_from: list[float] = []

    def release_after_one_timeout() -> None:
        # Wait until the ALTER queues behind our lock, then hold it past one lock_timeout.
        with engine.connect() as conn:
            for _ in range(600):
                waiting = conn.execute(
                    sa.text(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND query LIKE 'ALTER TABLE session_summaries%'"
                    )
                ).scalar()
                conn.rollback()
                if waiting:
                    waited_from.append(time.monotonic())
                    break
                time.sleep(0.05)
        time.sleep(3.5)
        holder.rollback()

    releaser = threading.Thread(target=release_after_one_timeout)
    releaser.start()
    out = run_alembic(pg_url, "upgrade", "0002_snapshot_columns")
    releaser.join()
    holder.close()
    assert out.returncode == 0, out.stderr
    assert "lock_timeout (3000 ms) on DDL, attempt 1/5" in out.stderr
    assert waited_from, "the ALTER never queued behind the lock"
    assert time.monotonic() - waited_from[0] >= 3.5
    with engine.connect() as conn:
        columns = {c["name"] for c in sa.inspect(conn).get_columns("session_summaries")}
    assert "snapshot_country" in columns
    engine.dispose()


@pytest.mark.postgres
def test_constraints_are_added_not_valid_then_validated_by_0004(pg_url: str) -> None:
    migrate(pg_url, "0002_snapshot_columns")
    engine = create_engine_from_url(pg_url)
    query = sa.text(
        "SELECT conname, convalidated FROM pg_constraint "
        "WHERE conrelid = 'session_summaries'::regclass AND contype IN ('c', 'f')"
    )
    with engine.connect() as conn:
        assert set(conn.execute(query).all()) == {
            (FK_NAME, False),
            (CK_NAME, False),
        }
    migrate(pg_url, "head")
    with engine.connect() as conn:
        assert all(valid for _name, valid in conn.execute(query).all())
    engine.dispose()
