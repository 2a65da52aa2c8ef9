"""PostgreSQL, the join-back by key (Citus; ``join_back=key``).

The same mapping without ``ctid``, without CTEs and without LIMIT in a subquery, so that
Citus can push every statement down to the shards when session_summaries and
raw_events are distributed by session_id and ip_inventory is a reference table
(docs/scale-out.md): the range predicate is on session_id, the earliest raw_events IP
is a LATERAL aggregate correlated on session_id (no LIMIT), the inventory is a plain
join, no function is volatile. Three statements a batch instead of one: the counts,
the UPDATE, and the rollback record's row, written from the UPDATE's RETURNING with
bound arrays (the record lives on the coordinator).

The join-back cannot check a row version as the ctid does, so it checks the values:
the UPDATE writes a row only while its five columns still hold what the resolution
read (``UNCHANGED``; re-checked on the newest version when a concurrent writer got
there first), so the old values in the record are exactly the values replaced, and a
row changed meanwhile is left for the catch-up pass, as on the ctid path.
"""

# Fixed fragments joined with f-strings, every value bound: see the package docstring.

from __future__ import annotations

from sqlalchemy import TextClause, text

from cowrieprocessor.backfill.json_storage import JsonColumn, JsonTypes
from cowrieprocessor.backfill.sql.record import WRITTEN
from cowrieprocessor.backfill.sql.resolve_pg import pg_candidates
from cowrieprocessor.backfill.sql.rules import (
    IP_SOURCES,
    NEEDS_SNAPSHOT,
    SET_NULL_ONLY,
    SPUR_PRIORITY,
    WOULD_CHANGE,
    WOULD_CHANGE_READ,
)
from cowrieprocessor.backfill.sql.walk import SESSIONS_TABLE, in_text, range_predicate


def _pg_spur_type_flat(col: JsonColumn) -> str:
    """``resolve_pg._pg_spur_type`` without a subquery: a type of SPUR_PRIORITY present in the
    list (jsonb containment, in priority order), else the list's first non-empty string
    (a JSON path), else NULL."""
    path = "-> 'spur' -> 'client' -> 'types'"
    types = f"(({col.expr} {path}))::jsonb"
    whens = " ".join(f"""WHEN {types} @> '["{t}"]' THEN '{t}'""" for t in SPUR_PRIORITY)
    first = f"""jsonb_path_query_first({types}, '$[*] ? (@.type() == "string" && @ != "")')"""
    return f"""CASE {col.typeof(path)}
               WHEN 'string' THEN NULLIF({col.expr} -> 'spur' -> 'client' ->> 'types', '')
               WHEN 'array' THEN CASE {whens} ELSE {first} #>> '{{}}' END
           END"""


def pg_resolve_flat(
    json: JsonTypes, range_sql: str, needs: str, table: str = SESSIONS_TABLE
) -> str:
    """One range's candidates with their IP and inventory row (NULLs when unmatched), as
    one subquery: the key path's resolution (see the module doc).

    The earliest raw_events IP is a ``LATERAL`` aggregate correlated on session_id (no
    LIMIT): computed once per candidate, and for a candidate that has an IP already its
    condition on the candidate alone is false, a one-time filter that skips the probe.
    A plain subquery in the select list would be copied by the planner into every place
    that uses its value (six probes per candidate in the counts)."""
    se, ev, inv = json.columns()
    ip = "COALESCE(c.old_ip, c.meta_ip, c.dshield_ip, ev.ev_ip)"
    return f"""(
    SELECT c.*, ev.ev_ip, {ip} AS ip,
           CASE WHEN c.old_ip IS NOT NULL THEN 1 WHEN c.meta_ip IS NOT NULL THEN 2
                WHEN c.dshield_ip IS NOT NULL THEN 3 WHEN ev.ev_ip IS NOT NULL THEN 4
           END AS src,
           i.ip_address, i.current_asn,
           CASE WHEN i.geo_country ~ '^[A-Z]{{2}}$' AND i.geo_country <> 'XX'
                THEN i.geo_country END AS country,
           COALESCE(NULLIF(i.ip_types[1], ''), {_pg_spur_type_flat(inv)}) AS ip_type,
           i.enrichment_updated_at
    FROM (
        {pg_candidates(se, range_sql, needs, table)}
    ) c
    LEFT JOIN LATERAL (
        SELECT (array_agg(lower(btrim({ev.expr} ->> 'src_ip'))
                          ORDER BY e.event_timestamp ASC NULLS LAST, e.id))[1] AS ev_ip
        FROM raw_events e
        WHERE c.old_ip IS NULL AND c.meta_ip IS NULL AND c.dshield_ip IS NULL
          AND e.session_id = c.session_id
          AND {ev.typeof("-> 'src_ip'")} = 'string'
          AND btrim({ev.expr} ->> 'src_ip') <> ''
    ) ev ON TRUE
    LEFT JOIN ip_inventory i ON i.ip_address = {ip}
) m"""


# The row still holds what the resolution read (see the module doc).
UNCHANGED = """s.source_ip IS NOT DISTINCT FROM m.old_ip
      AND s.snapshot_asn IS NOT DISTINCT FROM m.old_asn
      AND s.snapshot_country IS NOT DISTINCT FROM m.old_country
      AND s.snapshot_ip_type IS NOT DISTINCT FROM m.old_type
      AND s.enrichment_at IS NOT DISTINCT FROM m.old_at"""


def pg_key_counts(
    json: JsonTypes,
    has_lo: bool,
    has_hi: bool,
    needs: str = NEEDS_SNAPSHOT,
    table: str = SESSIONS_TABLE,
) -> TextClause:
    """The key path's counts of one range (and a dry run's: what it would update, and
    how many sessions each IP source resolves)."""
    resolve = pg_resolve_flat(json, range_predicate(has_lo, has_hi), needs, table)
    sources = ",".join(
        f"\n       count(*) FILTER (WHERE m.src = {n}) AS src_{n}"
        for n in range(1, len(IP_SOURCES) + 1)
    )
    return text(
        f"""SELECT count(*) AS candidates,
       count(*) FILTER (WHERE m.ip IS NULL) AS no_ip,
       count(*) FILTER (WHERE m.ip_address IS NOT NULL) AS matched,
       count(*) FILTER (WHERE m.ip_address IS NOT NULL AND {WOULD_CHANGE_READ}) AS updated,{sources}
FROM {resolve}"""
    )


def pg_key_update(
    json: JsonTypes,
    has_lo: bool,
    has_hi: bool,
    needs: str = NEEDS_SNAPSHOT,
    table: str = SESSIONS_TABLE,
) -> TextClause:
    """The key path's UPDATE of one range, returning what it wrote (``WRITTEN``)."""
    range_sql = range_predicate(has_lo, has_hi)
    resolve = pg_resolve_flat(json, range_sql, needs, table)
    return text(
        f"""UPDATE {in_text(table)} AS s SET {SET_NULL_ONLY}
FROM {resolve}
WHERE s.session_id = m.session_id AND {range_sql} AND m.ip_address IS NOT NULL
  AND {UNCHANGED} AND {WOULD_CHANGE}
RETURNING {WRITTEN}"""
    )
