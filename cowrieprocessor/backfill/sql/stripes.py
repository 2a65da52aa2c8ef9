"""Where the workers' stripes of ``session_id`` begin and end (PostgreSQL).

A stripe is a range ``(lo, hi]`` of ``session_id`` that one worker walks
(:mod:`cowrieprocessor.backfill.workers`). Its bounds are quantiles of the keys, read
without scanning the table: the histogram the planner keeps for ``session_id``
(``pg_stats.histogram_bounds``: equal-frequency buckets, in the column's order; the
``ANALYZE`` before the first batch makes it present), or, where there is none (a role
that may not read the statistics, a table the ``ANALYZE`` was refused on), the keys of a
``TABLESAMPLE SYSTEM`` sample of the table's pages, sorted by the server.
"""

from __future__ import annotations

from sqlalchemy import TextClause, text

from cowrieprocessor.backfill.sql.walk import SESSIONS_TABLE

# The histogram's bounds after :lo (all of them when :lo is NULL), in the histogram's
# order. :table is a name as to_regclass reads it (a value, bound).
HISTOGRAM_BOUNDS = text(
    "SELECT u.b FROM pg_catalog.pg_stats s "
    "JOIN pg_catalog.pg_namespace n ON n.nspname = s.schemaname "
    "JOIN pg_catalog.pg_class c ON c.relname = s.tablename AND c.relnamespace = n.oid "
    "CROSS JOIN LATERAL unnest(CAST(CAST(s.histogram_bounds AS text) AS text[])) "
    "WITH ORDINALITY AS u(b, i) "
    "WHERE c.oid = to_regclass(:table) AND s.attname = 'session_id' AND NOT s.inherited "
    "AND (CAST(:lo AS text) IS NULL OR u.b > CAST(:lo AS text)) "
    "ORDER BY u.i"
)

# The planner's estimate of the table's rows (-1 or 0: never counted), to size a sample.
ESTIMATED_ROWS = text("SELECT reltuples FROM pg_catalog.pg_class WHERE oid = to_regclass(:table)")


def sample_keys(has_lo: bool) -> TextClause:
    """The keys after ``:lo`` of a ``:percent`` sample of the table's pages, sorted."""
    where = "WHERE session_id > :lo " if has_lo else ""
    return text(
        f"SELECT session_id FROM {SESSIONS_TABLE} "
        "TABLESAMPLE SYSTEM (CAST(:percent AS real)) "
        f"{where}ORDER BY session_id"
    )
