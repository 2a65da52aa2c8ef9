"""PostgreSQL: one range resolved and written in one statement, joined back by ``ctid``.

The CTEs of :func:`pg_resolve` find each candidate's canonical IP and inventory row
(the rules: :mod:`cowrieprocessor.backfill.sql.rules`); :func:`pg_backfill` updates
what would change and writes the rollback record in the same statement;
:func:`pg_dry_run` counts instead. The UPDATE joins back on the ``ctid`` that the same
statement read (``JOIN_BACK``), a TID scan instead of a primary-key lookup per row.
The key path (Citus, no ``ctid``) is :mod:`cowrieprocessor.backfill.sql.resolve_pg_key`.
"""

# Fixed fragments joined with f-strings, every value bound: see the package docstring.

from __future__ import annotations

from sqlalchemy import TextClause, text

from cowrieprocessor.backfill.json_storage import JsonColumn, JsonTypes
from cowrieprocessor.backfill.sql.record import PG_RECORD_CTE, WRITTEN
from cowrieprocessor.backfill.sql.rules import (
    IP_SOURCES,
    NEEDS_SNAPSHOT,
    SET_NULL_ONLY,
    WOULD_CHANGE,
    WOULD_CHANGE_READ,
    priority_case,
)
from cowrieprocessor.backfill.sql.walk import SESSIONS_TABLE, in_text, range_predicate


def _pg_text(col: JsonColumn, path: str, leaf: str) -> str:
    """A JSON string at ``path -> leaf`` as trimmed, lower-cased text, else NULL."""
    return (
        f"CASE WHEN {col.typeof(f'{path} -> {leaf!r}')} = 'string' "
        f"THEN NULLIF(lower(btrim({col.expr} {path} ->> {leaf!r})), '') END"
    )


def _pg_spur_type(col: JsonColumn) -> str:
    path = "-> 'spur' -> 'client' -> 'types'"
    return f"""CASE {col.typeof(path)}
               WHEN 'string' THEN NULLIF({col.expr} -> 'spur' -> 'client' ->> 'types', '')
               WHEN 'array' THEN (
                   SELECT t.value #>> '{{}}'
                   FROM {col.elements(path)} WITH ORDINALITY AS t(value, n)
                   WHERE {col.kind}_typeof(t.value) = 'string' AND t.value #>> '{{}}' <> ''
                   ORDER BY {priority_case("t.value #>> '{}'")}, t.n
                   LIMIT 1)
           END"""


def _pg_scalar_text(kind: str, value: str) -> str:
    """A JSON value that is a string, as trimmed, lower-cased text, else NULL."""
    return (
        f"CASE WHEN {kind}_typeof({value}) = 'string' "
        f"THEN NULLIF(lower(btrim({value} #>> '{{}}')), '') END"
    )


def pg_candidates(se: JsonColumn, range_sql: str, needs: str, table: str, extra: str = "") -> str:
    """The range's sessions that need a snapshot: key, the five columns as they are, the
    IPs of the two enrichment sources (``extra``: more columns, fixed SQL).

    Each source is read only when the ones before it gave no IP, as ``COALESCE`` would:
    ``session_metadata``'s IP only without ``source_ip``, ``dshield``'s only without
    either. ``session_metadata``'s is found by one path lookup (``#>``) in a ``LATERAL``
    subquery that ``OFFSET 0`` keeps from being merged into the select list, so a
    ``json`` document is parsed once for it, not twice (its type, then its text): on the
    field's ``json`` columns at 1.68M sessions this took reading both sources from 10.4
    s to 3.4 s (docs/performance.md).
    """
    meta = _pg_scalar_text(se.kind, "m.meta_raw")
    return f"""SELECT s.session_id, {extra}s.source_ip AS old_ip, s.snapshot_asn AS old_asn,
           s.snapshot_country AS old_country, s.snapshot_ip_type AS old_type,
           s.enrichment_at AS old_at,
           {meta} AS meta_ip,
           CASE WHEN s.source_ip IS NULL AND {meta} IS NULL
                THEN {_pg_text(se, "-> 'dshield' -> 'ip'", "number")} END AS dshield_ip
    FROM {in_text(table)} s
    CROSS JOIN LATERAL (
        SELECT CASE WHEN s.source_ip IS NULL
                    THEN {se.expr} #> '{{session_metadata,source_ip}}' END AS meta_raw
        OFFSET 0
    ) m
    WHERE {range_sql} AND {needs}"""


def pg_resolve(json: JsonTypes, range_sql: str, needs: str, table: str = SESSIONS_TABLE) -> str:
    """The CTEs ``cand``, ``resolved``, ``matched`` of one range (the rules: :mod:`.rules`).

    Every lookup is one index probe per candidate, whatever the sizes of the tables and
    of the batch: the earliest ``raw_events`` IP and the inventory row are ``LATERAL``
    subqueries with ``LIMIT 1`` (``ip_address`` is the inventory's key, so the limit
    changes nothing but the plan), which PostgreSQL cannot turn into a hash join over a
    scan of the whole table. Without them the planner did exactly that on small tables
    or large batches (60K sessions, ranges of 5,000 keys: a scan of all of
    ``ip_inventory`` per batch), and would on any table whose statistics are stale.

    Both are joined to the candidates themselves, so whatever the planner expects of the
    range, each runs once per candidate, and the ``raw_events`` probe only for the
    candidates with no IP of their own or from their enrichment (a ``UNION ALL`` branch;
    with the probe's conditions on the candidate inside the ``LATERAL`` instead, its sort
    was set up for every candidate, 7% more per batch). When that probe was a CTE of its
    own joined back to the candidates, an estimate of one candidate (statistics saying
    the columns are set, or a range estimate from an unlucky ``ANALYZE`` sample at 1.68M
    sessions) put it, with a scan of every candidate, inside a loop over the
    candidates: a batch of 3,000 made 150,000 probes and took 1-3.5 s instead of
    0.1-0.3 s (``tests/test_batch_plans.py``).
    """
    se, ev, inv = json.columns()
    return f"""
WITH cand AS (
    {pg_candidates(se, range_sql, needs, table, "s.ctid AS row_ctid, ")}
),
resolved AS (
    SELECT c.*, COALESCE(c.old_ip, c.meta_ip, c.dshield_ip) AS ip,
           CASE WHEN c.old_ip IS NOT NULL THEN 1 WHEN c.meta_ip IS NOT NULL THEN 2
                WHEN c.dshield_ip IS NOT NULL THEN 3 END AS src
    FROM cand c
    WHERE c.old_ip IS NOT NULL OR c.meta_ip IS NOT NULL OR c.dshield_ip IS NOT NULL
    UNION ALL
    SELECT c.*, ev.ev_ip, CASE WHEN ev.ev_ip IS NOT NULL THEN 4 END
    FROM cand c
    LEFT JOIN LATERAL (
        SELECT lower(btrim({ev.expr} ->> 'src_ip')) AS ev_ip
        FROM raw_events e
        WHERE e.session_id = c.session_id
          AND {ev.typeof("-> 'src_ip'")} = 'string'
          AND btrim({ev.expr} ->> 'src_ip') <> ''
        ORDER BY e.event_timestamp ASC NULLS LAST, e.id
        LIMIT 1
    ) ev ON TRUE
    WHERE c.old_ip IS NULL AND c.meta_ip IS NULL AND c.dshield_ip IS NULL
),
matched AS (
    SELECT r.session_id, r.row_ctid, r.old_ip, r.old_asn, r.old_country, r.old_type,
           r.old_at, i.ip_address, i.current_asn, i.country, i.ip_type,
           i.enrichment_updated_at
    FROM resolved r
    CROSS JOIN LATERAL (
        SELECT i.ip_address, i.current_asn,
               CASE WHEN i.geo_country ~ '^[A-Z]{{2}}$' AND i.geo_country <> 'XX'
                    THEN i.geo_country END AS country,
               COALESCE(NULLIF(i.ip_types[1], ''), {_pg_spur_type(inv)}) AS ip_type,
               i.enrichment_updated_at
        FROM ip_inventory i
        WHERE i.ip_address = r.ip
        LIMIT 1
    ) i
)"""


# The row a candidate was read from, found again by its ctid (a TID Scan, no index
# lookup; the statement's snapshot keeps that version from being vacuumed away), and
# checked by its key all the same. A row that a concurrent writer changed meanwhile has
# a new ctid, so it is left for the catch-up pass: the old values read by ``cand`` are
# therefore exactly the values the UPDATE replaces (the rollback record relies on it).
#
# The TID list makes the scan of session_summaries a TID Scan of the batch's own rows in
# every plan: with the join condition alone the planner chose a hash join over a scan of
# the whole table when the batch is a large share of it (60K sessions, 5,000 keys).
JOIN_BACK = (
    "s.ctid = m.row_ctid AND s.session_id = m.session_id "
    "AND s.ctid = ANY (ARRAY(SELECT row_ctid FROM matched))"
)

PG_COUNTS = """
    (SELECT count(*) FROM resolved) AS candidates,
    (SELECT count(*) FROM resolved WHERE ip IS NULL) AS no_ip,
    (SELECT count(*) FROM matched) AS matched"""

PG_SOURCE_COUNTS = ",".join(
    f"\n    (SELECT count(*) FROM resolved WHERE src = {n}) AS src_{n}"
    for n in range(1, len(IP_SOURCES) + 1)
)


def pg_backfill(
    json: JsonTypes,
    has_lo: bool,
    has_hi: bool,
    needs: str = NEEDS_SNAPSHOT,
    keep_record: bool = True,
    table: str = SESSIONS_TABLE,
    range_sql: str | None = None,
) -> TextClause:
    """One range: resolve, update what would change, record it, and count: one round trip.

    ``would_change`` counts the rows that the values it read would change: more than
    ``updated`` when another writer changed some of them between the read and the
    UPDATE, which then leaves them as they are (``JOIN_BACK``).

    With ``record``, what the UPDATE wrote goes into the rollback record (one row per
    batch, see :mod:`cowrieprocessor.backfill.rollback_record`) in the same statement, so in the
    same transaction: the record can never miss a committed write. Bind ``:job``.
    ``range_sql``: the range's predicate when it is not of keys (a walk by blocks).
    """
    range_sql = range_sql or range_predicate(has_lo, has_hi)
    resolve = pg_resolve(json, range_sql, needs, table)
    returning = WRITTEN if keep_record else "1"
    rec = f",\n{PG_RECORD_CTE}" if keep_record else ""
    return text(
        f"""{resolve},
upd AS (
    UPDATE {in_text(table)} AS s SET {SET_NULL_ONLY}
    FROM matched m
    WHERE {JOIN_BACK} AND {WOULD_CHANGE}
    RETURNING {returning}
){rec}
SELECT {PG_COUNTS},
    (SELECT count(*) FROM upd) AS updated,
    (SELECT count(*) FROM matched m WHERE {WOULD_CHANGE_READ}) AS would_change"""
    )


def pg_dry_run(
    json: JsonTypes,
    has_lo: bool,
    has_hi: bool,
    needs: str = NEEDS_SNAPSHOT,
    table: str = SESSIONS_TABLE,
    range_sql: str | None = None,
) -> TextClause:
    """The same resolution as :func:`pg_backfill`, counting what it would update and
    how many sessions each IP source resolves."""
    range_sql = range_sql or range_predicate(has_lo, has_hi)
    resolve = pg_resolve(json, range_sql, needs, table)
    return text(
        f"""{resolve}
SELECT {PG_COUNTS},{PG_SOURCE_COUNTS},
    (SELECT count(*) FROM matched m JOIN {in_text(table)} s ON {JOIN_BACK}
      WHERE {WOULD_CHANGE}) AS updated"""
    )
