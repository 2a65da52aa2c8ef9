"""SQLite: one range resolved into a temp table, then updated and recorded from it.

A batch runs, in its ``BEGIN IMMEDIATE`` transaction: :func:`sqlite_resolve` (fill
``temp.cowrie_batch_rows`` with the range's candidates, their IP and old values), then
``SQLITE_UPDATE`` (or ``SQLITE_WOULD_UPDATE`` in a dry run), ``SQLITE_COUNTS``, and the
rollback record (``record.SQLITE_RECORD``). ``UPDATE ... FROM`` joins back on
``rowid``, which is stable inside that transaction.
"""

# Fixed fragments joined with f-strings, every value bound: see the package docstring.

from __future__ import annotations

from sqlalchemy import TextClause, text

from cowrieprocessor.backfill.sql.rules import (
    NEEDS_SNAPSHOT,
    SET_NULL_ONLY,
    WOULD_CHANGE,
    priority_case,
)
from cowrieprocessor.backfill.sql.walk import range_predicate

# One row per candidate of the batch: its rowid in session_summaries (the temp table's own
# rowid, so no index to maintain), its key, its canonical IP and that IP's source, and
# the five columns as they were (what the UPDATE then wrote is the rollback record).
SQLITE_BATCH_TABLE = text(
    "CREATE TEMP TABLE IF NOT EXISTS cowrie_batch_rows "
    "(rid INTEGER PRIMARY KEY, session_id TEXT, ip TEXT, src INTEGER, old_ip TEXT, "
    "old_asn INTEGER, old_country TEXT, old_type TEXT, old_at TEXT)"
)
SQLITE_BATCH_CLEAR = text("DELETE FROM temp.cowrie_batch_rows")


def _sqlite_text(column: str, path: str) -> str:
    """A JSON string at ``path`` as trimmed, lower-cased text, else NULL (bad JSON too)."""
    return f"""CASE WHEN json_valid({column}) THEN
               CASE WHEN json_type({column}, '{path}') = 'text'
                    THEN NULLIF(lower(trim(json_extract({column}, '{path}'))), '')
               END
           END"""


_SQLITE_RESOLVE = f"""
INSERT INTO temp.cowrie_batch_rows
    (rid, session_id, ip, src, old_ip, old_asn, old_country, old_type, old_at)
SELECT r.rid, r.session_id, COALESCE(r.old_ip, r.meta_ip, r.dshield_ip, r.ev_ip),
       CASE WHEN r.old_ip IS NOT NULL THEN 1 WHEN r.meta_ip IS NOT NULL THEN 2
            WHEN r.dshield_ip IS NOT NULL THEN 3 WHEN r.ev_ip IS NOT NULL THEN 4 END,
       r.old_ip, r.old_asn, r.old_country, r.old_type, r.old_at
FROM (
    SELECT c.*,
           CASE WHEN c.old_ip IS NULL AND c.meta_ip IS NULL AND c.dshield_ip IS NULL THEN (
               SELECT {_sqlite_text("e.payload", "$.src_ip")} AS ev_ip
               FROM raw_events e
               WHERE e.session_id = c.session_id AND ev_ip IS NOT NULL
               ORDER BY e.event_timestamp IS NULL, e.event_timestamp, e.id
               LIMIT 1)
           END AS ev_ip
    FROM (
        SELECT s.rowid AS rid, s.session_id,
               s.source_ip AS old_ip, s.snapshot_asn AS old_asn,
               s.snapshot_country AS old_country, s.snapshot_ip_type AS old_type,
               s.enrichment_at AS old_at,
               {_sqlite_text("s.enrichment", "$.session_metadata.source_ip")} AS meta_ip,
               {_sqlite_text("s.enrichment", "$.dshield.ip.number")} AS dshield_ip
        FROM session_summaries s
        WHERE {{range}} AND {{needs}}
    ) AS c
) AS r"""

SQLITE_COUNTS = text(
    """SELECT count(*) AS candidates,
       coalesce(sum(b.ip IS NULL), 0) AS no_ip,
       coalesce(sum(i.ip_address IS NOT NULL), 0) AS matched,
       coalesce(sum(b.src = 1), 0) AS src_1, coalesce(sum(b.src = 2), 0) AS src_2,
       coalesce(sum(b.src = 3), 0) AS src_3, coalesce(sum(b.src = 4), 0) AS src_4
FROM temp.cowrie_batch_rows b LEFT JOIN ip_inventory i ON i.ip_address = b.ip"""
)

_SQLITE_SPUR_TYPE = f"""CASE WHEN json_valid(i.enrichment) THEN
               CASE json_type(i.enrichment, '$.spur.client.types')
                   WHEN 'text' THEN NULLIF(json_extract(i.enrichment, '$.spur.client.types'), '')
                   WHEN 'array' THEN (
                       SELECT t.value FROM json_each(i.enrichment, '$.spur.client.types') AS t
                       WHERE t.type = 'text' AND t.value <> ''
                       ORDER BY {priority_case("t.value")}, t.key
                       LIMIT 1)
               END
           END"""

_SQLITE_MATCHED = f"""(
    SELECT b.rid, b.session_id, i.ip_address, i.current_asn,
           CASE WHEN i.geo_country GLOB '[A-Z][A-Z]' AND i.geo_country <> 'XX'
                THEN i.geo_country END AS country,
           COALESCE(
               CASE WHEN json_valid(i.ip_types) THEN
                   CASE WHEN json_type(i.ip_types, '$[0]') = 'text'
                        THEN NULLIF(json_extract(i.ip_types, '$[0]'), '') END
               END,
               {_SQLITE_SPUR_TYPE}) AS ip_type,
           i.enrichment_updated_at
    FROM temp.cowrie_batch_rows b JOIN ip_inventory i ON i.ip_address = b.ip
) AS m"""

# The IN list makes SQLite drive the join from the batch's rows; with the join condition
# alone it may scan the whole of session_summaries for every batch.
SQLITE_UPDATE = text(
    f"""UPDATE session_summaries AS s SET {SET_NULL_ONLY}
FROM {_SQLITE_MATCHED}
WHERE s.rowid IN (SELECT rid FROM temp.cowrie_batch_rows)
  AND s.rowid = m.rid AND {WOULD_CHANGE}"""
)

SQLITE_WOULD_UPDATE = text(
    f"""SELECT count(*) FROM {_SQLITE_MATCHED}
JOIN session_summaries s ON s.rowid = m.rid
WHERE {WOULD_CHANGE}"""
)


def sqlite_resolve(
    has_lo: bool, has_hi: bool, column: str = "s.session_id", needs: str = NEEDS_SNAPSHOT
) -> TextClause:
    """Fill the batch table with the range's candidates (``column``: the range's key)."""
    return text(_SQLITE_RESOLVE.format(range=range_predicate(has_lo, has_hi, column), needs=needs))
