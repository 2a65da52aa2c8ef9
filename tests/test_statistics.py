"""Before its first batch a job analyzes the tables the planner knows nothing of
(PostgreSQL): a database just restored or bulk-loaded is not planned blind."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import sqlalchemy as sa

from cowrieprocessor.backfill import BackfillKnobs, run_backfill
from cowrieprocessor.db.engine import create_engine_from_url
from cowrieprocessor.testing.databases import Databases
from cowrieprocessor.testing.oracle import current_snapshots, expected_snapshots
from cowrieprocessor.testing.seed import at_0002, partitioned_at_0002, read, seed_random

LOGGER = "cowrieprocessor.backfill"
KNOBS = BackfillKnobs.from_sources({"batch_size": "500"}, {})


def analyzed(engine: sa.Engine) -> dict[str, bool]:
    """Each table of the schema: whether an ANALYZE has been run on it (autovacuum's,
    which may come at any time on a busy test machine, does not count)."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT relname, last_analyze IS NOT NULL FROM pg_stat_user_tables")
        ).all()
    return {name: bool(done) for name, done in rows}


def no_autovacuum(conn: sa.Connection) -> None:
    """Autovacuum off on every plain table and leaf: on a busy machine it may analyze a
    freshly seeded table before the run does, and the run then rightly leaves it be (it
    failed the leaf test so once)."""
    leaves = sa.text(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = current_schema() AND c.relkind = 'r'"
    )
    for name in conn.execute(leaves).scalars():
        table = sa.table(name)
        conn.execute(
            sa.text(
                f"ALTER TABLE {conn.dialect.identifier_preparer.format_table(table)} "
                "SET (autovacuum_enabled = false)"
            )
        )


def seeded(engine: sa.Engine) -> dict[str, Any]:
    with engine.begin() as conn:
        no_autovacuum(conn)
        seed_random(conn, 3000, 300, seed=3)
    with engine.connect() as conn:
        return expected_snapshots(conn)


def test_a_table_never_analyzed_is_analyzed_before_the_first_batch(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = at_0002(pg_url)
    want = seeded(engine)
    assert not analyzed(engine).get("session_summaries")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        run_backfill(engine, KNOBS)
    lines = [
        r.getMessage()
        for r in caplog.records
        if "analyzed before the first batch" in r.getMessage()
    ]
    assert any(line.startswith("public.session_summaries: never analyzed;") for line in lines), (
        lines
    )
    assert any(line.startswith("public.ip_inventory: never analyzed;") for line in lines), lines
    assert analyzed(engine)["session_summaries"] and analyzed(engine)["ip_inventory"]
    assert read(pg_url, current_snapshots) == want
    # analyzed now: the next run does not take the tables for never analyzed (it may
    # analyze again when the seeding's row counts reach the statistics only now)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        run_backfill(engine, KNOBS)
    assert not [r for r in caplog.records if "never analyzed" in r.getMessage()]
    engine.dispose()


def test_statistics_kept_when_the_activity_counters_were_lost_are_not_analyzed_again(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A crash, ``pg_stat_reset()`` or a copy by ``CREATE DATABASE ... TEMPLATE`` loses
    ``last_analyze`` but keeps the planner's statistics: they are used, not redone."""
    engine = at_0002(pg_url)
    want = seeded(engine)
    with engine.connect() as conn:
        conn.execute(sa.text("ANALYZE session_summaries"))
        conn.execute(sa.text("ANALYZE ip_inventory"))
        conn.execute(sa.text("SELECT pg_stat_reset()"))
        conn.commit()
    assert not analyzed(engine).get("session_summaries")  # the counters say never
    with caplog.at_level(logging.INFO, logger=LOGGER):
        run_backfill(engine, KNOBS)
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "never analyzed" in m], messages
    assert not analyzed(engine).get("session_summaries")
    assert not analyzed(engine).get("ip_inventory")
    assert read(pg_url, current_snapshots) == want
    engine.dispose()


def test_a_dry_run_says_what_it_would_analyze_and_analyzes_nothing(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = at_0002(pg_url)
    seeded(engine)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        run_backfill(engine, KNOBS, dry_run=True)
    assert any(
        "public.session_summaries: never analyzed; a run will ANALYZE it" in r.getMessage()
        for r in caplog.records
    )
    assert not analyzed(engine).get("session_summaries")
    engine.dispose()


def test_each_leaf_of_a_partitioned_table_is_analyzed(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = partitioned_at_0002(pg_url, "hash")
    want = seeded(engine)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        run_backfill(engine, KNOBS)
    done = analyzed(engine)
    leaves = sorted(name for name in done if name.startswith("session_summaries_"))
    assert leaves and all(done[leaf] for leaf in leaves), done
    assert read(pg_url, current_snapshots) == want
    engine.dispose()


def test_a_table_locked_against_analyze_is_left_as_it_is_and_the_backfill_goes_on(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = at_0002(pg_url)
    want = seeded(engine)
    holder = create_engine_from_url(pg_url).connect()
    # what autovacuum or a CREATE INDEX CONCURRENTLY would hold; reads and writes go on
    holder.execute(sa.text("LOCK TABLE ip_inventory IN SHARE UPDATE EXCLUSIVE MODE"))
    knobs = BackfillKnobs.from_sources({"batch_size": "500", "lock_timeout": "200"}, {})
    try:
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            run_backfill(engine, knobs)
    finally:
        holder.rollback()
        holder.close()
    assert any(
        "public.ip_inventory: never analyzed, and ANALYZE failed (canceling statement due "
        "to lock timeout)" in r.getMessage()
        for r in caplog.records
    ), [r.getMessage() for r in caplog.records]
    assert not analyzed(engine).get("ip_inventory")
    assert analyzed(engine)["session_summaries"]
    assert read(pg_url, current_snapshots) == want
    engine.dispose()


def test_a_role_that_may_not_analyze_says_so_and_the_backfill_goes_on(
    pg_databases: Databases, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL skips another role's ANALYZE with a mere warning: the run must not
    claim it analyzed, and must say who may."""
    url = pg_databases.new()
    engine = at_0002(url)
    want = seeded(engine)
    role = "cowrie_not_owner"
    assert pg_databases.admin is not None
    with pg_databases.admin.connect() as admin:
        admin.execute(sa.text(f"DROP ROLE IF EXISTS {role}"))
        admin.execute(sa.text(f"CREATE ROLE {role} LOGIN"))
        admin.commit()
    with engine.begin() as conn:
        conn.execute(sa.text(f"GRANT ALL ON SCHEMA public TO {role}"))
        conn.execute(sa.text(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}"))
    plain = create_engine_from_url(sa.make_url(url).set(username=role))
    with caplog.at_level(logging.INFO, logger=LOGGER):
        run_backfill(plain, KNOBS)
    plain.dispose()
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        m.startswith("public.session_summaries: never analyzed, and this role may not ANALYZE it")
        and "ask its owner to run ANALYZE public.session_summaries" in m
        for m in messages
    ), messages
    assert not [m for m in messages if "analyzed before the first batch" in m]
    assert not analyzed(engine).get("session_summaries")
    assert read(url, current_snapshots) == want
    engine.dispose()
