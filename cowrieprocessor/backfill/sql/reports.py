"""The statements of the read-only reports (``cowrie-db check``, ``status``, ``verify``;
:mod:`cowrieprocessor.report` runs them and shapes their results).

Two counts of "has a snapshot", each from its one definition in
:mod:`cowrieprocessor.backfill.sql.rules`: ``COUNT_WITH_SNAPSHOT`` (a ``source_ip``,
what coverage and ``verify`` measure) and ``COUNT_WITH_VALUES`` (any of the five
columns, what ``status`` reports before a clear).
"""

# Fixed fragments joined with f-strings, every value bound: see the package docstring.

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import text

from cowrieprocessor.backfill.progress import progress_table
from cowrieprocessor.backfill.sql.rules import HAS_SNAPSHOT, HAS_SOURCE_IP, NEEDS_SNAPSHOT
from cowrieprocessor.backfill.sql.walk import SESSIONS_TABLE

COUNT_WITH_VALUES = text(f"SELECT count(*) FROM {SESSIONS_TABLE} s WHERE {HAS_SNAPSHOT}")
COUNT_WITH_SNAPSHOT = text(f"SELECT count(*) FROM {SESSIONS_TABLE} s WHERE {HAS_SOURCE_IP}")

# verify: a few sessions with a snapshot, and the ones whose snapshot differs from the
# inventory's current values (the snapshot is of the time of the session: informative).
SNAPSHOT_SAMPLE = text(
    "SELECT session_id, source_ip, snapshot_asn, snapshot_country, snapshot_ip_type, "
    f"enrichment_at FROM {SESSIONS_TABLE} s WHERE {HAS_SOURCE_IP} "
    "ORDER BY session_id LIMIT 5"
)
ASN_DIVERGENT = text(
    f"SELECT count(*) FROM {SESSIONS_TABLE} s JOIN ip_inventory i "
    "ON i.ip_address = s.source_ip WHERE s.snapshot_asn <> i.current_asn"
)
COUNTRY_DIVERGENT = text(
    f"SELECT count(*) FROM {SESSIONS_TABLE} s JOIN ip_inventory i "
    "ON i.ip_address = s.source_ip WHERE s.snapshot_country <> i.geo_country"
)

# The runbook's query, which the snapshot index must serve by an index-only scan.
RUNBOOK_QUERY = (
    "SELECT session_id, snapshot_country, snapshot_asn FROM session_summaries "
    "WHERE snapshot_country = 'CN' AND snapshot_asn = 4134"
)
PG_RUNBOOK_PLAN = text("EXPLAIN (COSTS OFF) " + RUNBOOK_QUERY)
SQLITE_RUNBOOK_PLAN = text("EXPLAIN QUERY PLAN " + RUNBOOK_QUERY)

PG_SERVER_VERSION = text("SHOW server_version")
SQLITE_SERVER_VERSION = text("SELECT sqlite_version()")

# The CHECK and FOREIGN KEY constraints of session_summaries and whether each is
# validated (PostgreSQL); SQLite has them only in the table's own CREATE statement.
PG_CONSTRAINTS = text(
    "SELECT conname, convalidated FROM pg_constraint "
    "WHERE conrelid = to_regclass('session_summaries') AND contype IN ('c', 'f') "
    "ORDER BY conname"
)
SQLITE_TABLE_SQL = text("SELECT sql FROM sqlite_master WHERE name = 'session_summaries'")

# A partitioned session_summaries: each leaf's sessions and those lacking a snapshot
# column, in one scan (check); each leaf's sessions as the planner estimates them (status).
LEAF_COUNTS = text(
    f"SELECT s.tableoid::regclass::text AS leaf, count(*) AS sessions, "
    f"count(*) FILTER (WHERE {NEEDS_SNAPSHOT}) AS needing "
    "FROM session_summaries s GROUP BY 1"
)
LEAF_ESTIMATES = text(
    "SELECT c.oid::regclass::text, greatest(c.reltuples, 0)::bigint FROM pg_class c "
    "WHERE c.oid = ANY (SELECT relid FROM pg_partition_tree('session_summaries') WHERE isleaf)"
)

# status: the engine's columns of one job's progress row (bind ``job``).
RUN_COLUMNS = sa.select(
    progress_table.c.run_state, progress_table.c.run_info, progress_table.c.heartbeat_at
).where(progress_table.c.job == sa.bindparam("job"))
