"""The catch-up pass: what the walk could not see is filled, by listing the sessions still
without ``source_ip`` once (PostgreSQL) or walking every range again (SQLite)."""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command

from cowrieprocessor.backfill import BackfillKnobs, BatchReport, run_backfill, sql
from cowrieprocessor.backfill.keys import SESSION_ID_ORDER, KeyListOrder, catchup_keys
from cowrieprocessor.backfill.progress import CATCHUP, WALK
from cowrieprocessor.db.engine import create_engine_from_url
from cowrieprocessor.testing.databases import Databases
from cowrieprocessor.testing.oracle import current_snapshots, expected_snapshots
from cowrieprocessor.testing.plans import nodes, scans
from cowrieprocessor.testing.runners import alembic_config
from cowrieprocessor.testing.seed import add_ip, add_session, at_0002, read, seed_random


def test_sessions_inserted_behind_the_walk_are_caught_up(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = at_0002(db_url)
    with engine.begin() as conn:
        seed_random(conn, 3_000, 300, seed=3)
    inserted: list[str] = []
    percents: list[float] = []
    writer = create_engine_from_url(db_url)

    def on_batch(report: BatchReport) -> None:
        percents.append(report.progress.percent)
        if report.phase == WALK and report.batch == 5 and report.hi is not None:
            # three sessions the walk has passed (keys before the saved position), and
            # their IP in the inventory: only the catch-up can fill them
            with writer.begin() as conn:
                add_ip(conn, "198.51.100.7", asn=4134, country="NL")
                for n in range(3):
                    sid = f"000000000{n:03d}"
                    add_session(conn, sid, meta_ip="198.51.100.7")
                    inserted.append(sid)

    knobs = BackfillKnobs.from_sources({"batch_size": "200"}, {})
    with caplog.at_level(logging.INFO, logger="cowrieprocessor.backfill"):
        result = run_backfill(engine, knobs, on_batch=on_batch)
    writer.dispose()
    engine.dispose()
    got: dict[str, Any] = read(db_url, current_snapshots)
    want: dict[str, Any] = read(db_url, expected_snapshots)
    assert len(inserted) == 3
    for sid in inserted:
        assert got[sid][0] == "198.51.100.7" and got[sid][1] == 4134, sid
    assert got == want
    assert percents == sorted(percents) and percents[-1] == 100.0  # the job's percent
    catchup = [r.getMessage() for r in caplog.records if "catchup:" in r.getMessage()]
    still_null = read(
        db_url,
        lambda c: int(
            c.execute(
                sa.text("SELECT count(*) FROM session_summaries WHERE source_ip IS NULL")
            ).scalar_one()
        ),
    )
    if engine.dialect.name == "postgresql":
        # one scan listed the walk's unmatched sessions (still without source_ip at the
        # end) and the three new ones
        listed = [m for m in catchup if "sessions without source_ip to look at again" in m]
        assert len(listed) == 1, catchup
        found = re.search(r"catchup: (\d+) sessions", listed[0])
        assert found is not None and int(found.group(1)) == still_null + 3, (listed, still_null)
    assert result.matched >= 3


def test_the_catch_up_resumes_from_its_position(db_url: str) -> None:
    """Stopped in the catch-up pass, a rerun lists again what is after its position."""
    engine = at_0002(db_url)
    with engine.begin() as conn:
        seed_random(conn, 1_000, 60, seed=9)
    stop_after: dict[str, int] = {"catchup": 0}
    stop = threading.Event()

    def on_batch(report: BatchReport) -> None:
        if report.phase == CATCHUP:
            stop_after["catchup"] += 1
            if stop_after["catchup"] == 2:
                stop.set()

    knobs = BackfillKnobs.from_sources({"batch_size": "8"}, {})
    with pytest.raises(Exception, match="rerun to resume"):
        run_backfill(engine, knobs, stop=stop, on_batch=on_batch)
    assert stop_after["catchup"] == 2
    result = run_backfill(engine, knobs)
    engine.dispose()
    assert result.resumed
    assert read(db_url, current_snapshots) == read(db_url, expected_snapshots)


def test_the_catch_up_list_is_one_sequential_scan_whatever_the_statistics_expect(
    pg_url: str,
) -> None:
    """After a walk the statistics may still say that most sessions lack ``source_ip``
    (autovacuum's ANALYZE ran during the walk): the list is then not read through the
    primary key over the whole table, and is still in the column's order."""
    engine = at_0002(pg_url)
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE session_summaries SET (autovacuum_enabled = false)"))
        seed_random(conn, 3_000, 300, seed=3)
    with engine.begin() as conn:
        conn.execute(sa.text("ANALYZE session_summaries"))  # every source_ip still NULL
    run_backfill(engine, BackfillKnobs.from_sources({"batch_size": "500"}, {}))
    with engine.connect() as conn:
        conn.execute(sa.text("SET random_page_cost = 1.1"))  # an SSD server's, as pgtune sets
        expected_null = conn.execute(
            sa.text(
                "SELECT null_frac FROM pg_stats WHERE tablename = 'session_summaries' "
                "AND attname = 'source_ip'"
            )
        ).scalar_one()
        listed = catchup_keys(conn, None, 200_001, SESSION_ID_ORDER)
        by_column = (
            conn.execute(
                sa.text(
                    "SELECT session_id FROM session_summaries WHERE source_ip IS NULL "
                    "ORDER BY session_id"
                )
            )
            .scalars()
            .all()
        )
        query = sql.catchup_keys_query(False).text
        plan = conn.execute(
            sa.text(f"EXPLAIN (FORMAT JSON) {query}"), {"limit": 200_001}
        ).scalar_one()
    engine.dispose()
    assert expected_null > 0.9, expected_null  # what the planner believes
    assert 0 < len(listed) < 300 and listed == by_column  # what is true, in the same order
    found = list(nodes(plan[0]["Plan"]))
    assert scans(found).get("session_summaries") == ["Seq Scan"], [n["Node Type"] for n in found]


# Session ids in the order of ICU's en-US collation (PostgreSQL's, on such a database),
# which is not Python's: "_" and "-" sort before digits and letters, case comes second.
ICU_ORDER = ["_9", "-c", "0x8", "a_b5", "a-b4", "Aa0", "aB1", "ab2", "AB3", "B6", "b7"]


@pytest.mark.parametrize("step", [1, 2, 3, 5])
def test_the_catch_up_list_is_taken_in_its_own_order(step: int) -> None:
    """Each batch takes the keys of its range (lo, hi] of the list, however Python
    would compare them: together, every key once. A binary search left keys out."""
    assert sorted(ICU_ORDER) != ICU_ORDER
    for start, keys in [(None, ICU_ORDER), ("0x8", ICU_ORDER[3:])]:  # read after a position
        order = KeyListOrder(keys, 1.0, start=start)
        taken: list[str] = []
        lo = start
        while True:
            hi = order.bound_after(None, lo, step - 1)  # type: ignore[arg-type]  # no query
            batch = order.params(lo, hi)["keys"]
            assert batch == keys[len(taken) : len(taken) + len(batch)], (lo, hi, batch)
            assert hi is None or batch[-1] == hi
            assert order.count(None, lo, hi) == len(batch)  # type: ignore[arg-type]
            taken += batch
            if hi is None:
                break
            lo = hi
        assert taken == keys
    with pytest.raises(ValueError, match="'zz' is not in the list"):
        KeyListOrder(ICU_ORDER, 1.0).params("zz", None)


def test_sessions_behind_the_walk_are_caught_up_under_an_icu_collation(
    pg_databases: Databases,
) -> None:
    """On a database whose collation is not Python's order, every session inserted
    behind the walk (ids with punctuation and mixed case) is filled by the catch-up."""
    url = pg_databases.new_icu()
    if url is None:
        pytest.skip("this PostgreSQL has no ICU collation (it needs 15+ built with ICU)")
    command.upgrade(alembic_config(url), "0002_snapshot_columns")
    engine = create_engine_from_url(url)
    with engine.begin() as conn:
        seed_random(conn, 1_000, 100, seed=4)
    weird = sorted({f"{a}{b}{n}" for n in range(12) for a in "_-aAbB" for b in ".-zZ0"})
    writer = create_engine_from_url(url)

    def on_batch(report: BatchReport) -> None:
        if report.phase == WALK and report.batch == 3:
            with writer.begin() as conn:
                add_ip(conn, "198.51.100.9", asn=4134, country="NL")
                for sid in weird:
                    add_session(conn, sid, meta_ip="198.51.100.9")

    run_backfill(engine, BackfillKnobs.from_sources({"batch_size": "7"}, {}), on_batch=on_batch)
    writer.dispose()
    with engine.connect() as conn:
        server = list(
            conn.execute(
                sa.text("SELECT session_id FROM session_summaries ORDER BY session_id")
            ).scalars()
        )
    engine.dispose()
    assert server != sorted(server)  # the premise: the server's order is not Python's
    got: dict[str, Any] = read(url, current_snapshots)
    assert [sid for sid in weird if got[sid][0] != "198.51.100.9"] == []
    assert got == read(url, expected_snapshots)
