"""The planner's statistics of the tables a batch reads (PostgreSQL).

A batch's statement is planned from ``pg_statistic``. A table never analyzed (a
database just restored with ``pg_restore``, a test's freshly seeded one) or bulk-loaded
since its last ``ANALYZE`` is planned blind: 12,000 fresh sessions in batches of 2,000
took 13.8 s instead of 0.44 s after an ``ANALYZE`` (PostgreSQL 15, measured).
"""

from __future__ import annotations

from sqlalchemy import Dialect, text

from cowrieprocessor.backfill.sql.walk import INVENTORY_TABLE, SESSIONS_TABLE

# The tables named (regclass text, as :func:`cowrieprocessor.db.partitions.leaves`
# gives them) with what their statistics describe: rows counted by the last ANALYZE
# (-1 on PostgreSQL 14+, 0 before, when never analyzed or vacuumed), rows changed since,
# whether the planner has no statistics of it (no row in ``pg_stats``: never analyzed),
# and whether this role may ANALYZE it: its owner (or a member of the owner's role), a
# superuser, or on PostgreSQL 17+ a member of pg_maintain. Anyone else's ANALYZE is
# skipped by the server with a mere warning. "Never analyzed" is asked of the statistics
# themselves, not of ``pg_stat_user_tables.last_analyze``: those activity counters are
# lost by a crash, ``pg_stat_reset()`` or a copy made with ``CREATE DATABASE ...
# TEMPLATE``, where the statistics are kept, and would have the run analyze again
# (about 0.5 s a table at 1.68M sessions).
TABLE_STATISTICS = text(
    "SELECT n.nspname, c.relname, c.reltuples, coalesce(s.n_mod_since_analyze, 0), "
    "NOT EXISTS (SELECT 1 FROM pg_stats st "
    "WHERE st.schemaname = n.nspname AND st.tablename = c.relname), "
    "pg_has_role(c.relowner, 'USAGE') "
    "OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) "
    "OR EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = 'pg_maintain' "
    "AND pg_has_role(r.oid, 'USAGE')) "
    "FROM unnest(CAST(:tables AS text[])) AS t(name) "
    "JOIN pg_class c ON c.oid = to_regclass(t.name) "
    "JOIN pg_namespace n ON n.oid = c.relnamespace "
    "LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid "
    "WHERE c.relkind = 'r'"
)


# ANALYZE waits for its lock at most the batches' lock_timeout (its transaction only).
ANALYZE_LOCK_TIMEOUT = text("SELECT set_config('lock_timeout', :ms, true)")


def analyze(dialect: Dialect, schema: str, name: str) -> str:
    """``ANALYZE schema.name``, both names quoted by the dialect (they come from the
    catalog)."""
    quote = dialect.identifier_preparer
    return f"ANALYZE {quote.quote_schema(schema)}.{quote.quote(name)}"


# Offline (``alembic upgrade --sql``): what the script a DBA runs does first, as the
# online run does for a table without statistics. The script cannot ask whether the
# statistics are there, so it always analyzes: a sample, seconds at 1.68M rows.
OFFLINE_ANALYZE = [text(f"ANALYZE {SESSIONS_TABLE}"), text(f"ANALYZE {INVENTORY_TABLE}")]
