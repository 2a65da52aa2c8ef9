"""PostgreSQL plans a batch the same way whatever the sizes of the tables and of the batch:
one index probe per candidate into ``raw_events`` and ``ip_inventory``, and a TID scan of
the batch's own rows for the join-back. Never a scan of a whole table: that would make
every batch cost as much as the table, and the walk quadratic.

The sizes where the planner used to flip: a small table and a batch that is a large
share of it (at 60K sessions, ranges of 5,000 keys, it hashed all of ``ip_inventory``
and scanned all of ``session_summaries``, once per batch). Here ranges of half of 2,000
sessions and of 50, after ``ANALYZE``, on our schema and on the field's (``json``
columns, upstream's indexes).

And the same linear plan when the planner expects next to no candidates in the range
(statistics that say the columns are set, or a range estimate from an unlucky
``ANALYZE`` sample): no lookup runs more than once per candidate.
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from cowrieprocessor.backfill import json_storage, sql
from cowrieprocessor.testing import field_schema
from cowrieprocessor.testing.plans import nodes, scans
from cowrieprocessor.testing.seed import at_0002, seed_random

SESSIONS = 2_000


# The PostgreSQL batch statements, each over a range with both bounds.
STATEMENTS = {
    "backfill": lambda json: sql.pg_backfill(json, True, True),
    "dry-run": lambda json: sql.pg_dry_run(json, True, True),
    "key-update": lambda json: sql.pg_key_update(json, True, True),
    "key-counts": lambda json: sql.pg_key_counts(json, True, True),
}


def batch_plan(
    conn: sa.Connection, keys: int, statement: str, analyze: bool = False
) -> list[dict[str, Any]]:
    """The plan of ``STATEMENTS[statement]`` over ``keys`` sessions from the table's
    middle; with ``analyze``, as it ran (the caller rolls it back)."""
    json = json_storage.detect(conn)
    lo = conn.execute(sql.next_bound(False), {"offset": SESSIONS // 4}).scalar()
    hi = conn.execute(sql.next_bound(True), {"lo": lo, "offset": keys - 1}).scalar()
    stmt = STATEMENTS[statement](json)
    params = {"lo": lo, "hi": hi, "job": "plan"}
    explain = "EXPLAIN (ANALYZE, FORMAT JSON) " if analyze else "EXPLAIN (FORMAT JSON) "
    plan = conn.execute(sa.text(explain + stmt.text), params).scalar_one()
    return list(nodes(plan[0]["Plan"]))


def _unused_ip(n: int) -> dict[str, Any]:
    """An inventory row no session names (198.18.0.0/15, for benchmarks)."""
    return {
        "ip": f"198.18.{n // 250}.{n % 250 + 1}",
        "asn": None,
        "verified": None,
        "first_seen": field_schema.T0,
        "last_seen": field_schema.T0,
        "session_count": 1,
        "enrichment": "{}",
        "updated_at": None,
        "ip_types": [],
    }


def seeded(pg_url: str, shape: str) -> sa.Engine:
    """``SESSIONS`` sessions on our schema at 0002 (``current``) or the field's."""
    if shape == "current":
        engine = at_0002(pg_url)
        with engine.begin() as conn:
            seed_random(conn, SESSIONS, 1_500, seed=5)
        return engine
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        field_schema.build_postgres(conn)
        field_schema.seed_postgres(conn, sessions=SESSIONS, seed=5)
        # the fixture's 60 IPs fit in three pages, which a plan may rightly read
        # whole; an inventory of thousands of IPs, as in the field, may not be
        conn.execute(sa.text(field_schema._INSERT_IP), [_unused_ip(n) for n in range(4_000)])
    return engine


@pytest.fixture(params=["current", "field"])
def analyzed_url(request: pytest.FixtureRequest, pg_url: str) -> str:
    engine = seeded(pg_url, request.param)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("ANALYZE"))
    with engine.begin() as conn:
        conn.execute(sql.PG_RECORD_DDL)
    engine.dispose()
    return pg_url


@pytest.mark.parametrize("keys", [50, SESSIONS // 2])
@pytest.mark.parametrize("statement", ["backfill", "dry-run"])
def test_a_batch_never_plans_a_scan_of_a_whole_table(
    analyzed_url: str, keys: int, statement: str
) -> None:
    engine = sa.create_engine(analyzed_url)
    with engine.connect() as conn:
        plan = batch_plan(conn, keys, statement)
        rows = conn.execute(
            sa.text(
                "SELECT relname, relpages FROM pg_class "
                "WHERE relname IN ('ip_inventory', 'raw_events')"
            )
        ).all()
        pages: dict[str, int] = {str(name): int(n) for name, n in rows}
    engine.dispose()
    found = scans(plan)
    # one index probe per candidate into the inventory and into raw_events
    for table in ("ip_inventory", "raw_events"):
        assert pages[table] > 10, pages  # a table worth not scanning
        probes = {"Index Scan", "Bitmap Heap Scan"}
        assert len(found[table]) == 1 and found[table][0] in probes, (table, found)
    # session_summaries: the range's candidates (by key; a range of half the table may
    # be read sequentially), then the join-back, a TID scan of the batch's own rows
    assert len(found["session_summaries"]) == 2 and "Tid Scan" in found["session_summaries"], found


# -- statistics that say no session needs a snapshot ------------------------------------


@pytest.fixture(params=["current", "field"])
def stale_url(request: pytest.FixtureRequest, pg_url: str) -> str:
    """Sessions that all need a snapshot, planned from statistics that say none does:
    the columns were filled when the table was last analyzed, and nulled since (a
    downgrade, then a redeploy before autovacuum analyzes the table again). The range's
    candidates are then estimated at one row, whatever the range."""
    engine = seeded(pg_url, request.param)
    with engine.begin() as conn:
        conn.execute(sql.PG_RECORD_DDL)
        conn.execute(sa.text("ALTER TABLE session_summaries SET (autovacuum_enabled = false)"))
        ip, asn = conn.execute(
            sa.text(
                "SELECT ip_address, current_asn FROM ip_inventory "
                "WHERE current_asn IS NOT NULL ORDER BY ip_address LIMIT 1"
            )
        ).one()
        conn.execute(
            sa.text(
                "UPDATE session_summaries SET source_ip = :ip, snapshot_asn = :asn, "
                "snapshot_country = 'US', snapshot_ip_type = 'DATACENTER', enrichment_at = now()"
            ),
            {"ip": ip, "asn": asn},
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("ANALYZE"))
        conn.execute(
            sa.text(
                "UPDATE session_summaries SET source_ip = NULL, snapshot_asn = NULL, "
                "snapshot_country = NULL, snapshot_ip_type = NULL, enrichment_at = NULL"
            )
        )
        # the dead row versions go; VACUUM leaves the column statistics as they were
        conn.execute(sa.text("VACUUM session_summaries"))
    engine.dispose()
    return pg_url


@pytest.mark.parametrize("statement", list(STATEMENTS))
def test_a_batch_stays_linear_when_the_statistics_say_nothing_needs_a_snapshot(
    stale_url: str, statement: str
) -> None:
    """Each lookup runs at most once per candidate, however few candidates the planner
    expects. Before the earliest ``raw_events`` IP was a ``LATERAL`` join of the
    candidates, an estimate of one candidate put that lookup, with a scan of every
    candidate, inside a loop over the candidates: 150,000 probes for a batch of 3,000
    (2.3-3.5 s instead of 0.12 s at 200K sessions; at 1.68M sessions the range estimate
    alone, from an ordinary ``ANALYZE`` sample, came out at one row for some ranges)."""
    keys = SESSIONS // 2
    engine = sa.create_engine(stale_url)
    with engine.connect() as conn:
        plan = batch_plan(conn, keys, statement, analyze=True)
        conn.rollback()
    engine.dispose()
    scanned = [n for n in plan if n.get("Relation Name") == "session_summaries"]
    # the planner expects next to no candidates (the statistics say the columns are set) ...
    assert min(n["Plan Rows"] for n in scanned) <= 10, [n["Plan Rows"] for n in scanned]
    # ... and every session of the range is one (every session needs a snapshot)
    assert max(n["Actual Rows"] for n in scanned) == keys
    for node in plan:
        what = (node["Node Type"], node.get("Relation Name"), node.get("CTE Name"))
        loops = node["Actual Loops"]
        if node["Node Type"] == "CTE Scan":  # the candidates, read once, not once each
            assert loops == 1, (what, loops)
        elif "Relation Name" in node and node["Node Type"] != "ModifyTable":
            assert loops <= keys, (what, loops)  # at most one probe per candidate
            assert loops == 1 or node["Node Type"] != "Seq Scan", (what, loops)
