"""The backfill's SQL, one module, both dialects.

Why one module of this size: it is the one place that composes SQL text (reviewed by
hand for injection, see pyproject's S608 exception), so every statement stays here.

Everything a batch does is here as fixed SQL text with bound parameters (``:lo``,
``:hi``, timeouts). The only text that varies is the *shape* of the range predicate
(no lower bound on the first range, no upper bound on the last), picked from fixed
fragments, never a value.

Which value goes where (see docs/runbook.md, "What the backfill writes"):

* canonical IP of a session: its existing ``source_ip``; else
  ``enrichment -> session_metadata -> source_ip`` when that is a JSON string (trimmed,
  lower-cased, non-empty); else the ``src_ip`` (a non-empty JSON string, trimmed and
  lower-cased) of its earliest ``raw_events`` row that has one, by
  ``event_timestamp`` (NULL last), then ``id``;
* a session is *matched* when that IP is an ``ip_inventory.ip_address``;
* each NULL snapshot column of a matched session gets: ``source_ip`` = ``ip_address``,
  ``snapshot_asn`` = ``current_asn``, ``snapshot_country`` = ``geo_country`` when it is
  two upper-case letters other than ``XX`` (else NULL), ``snapshot_ip_type`` = the
  first element of ``ip_types`` when it is a non-empty string (else NULL),
  ``enrichment_at`` = ``enrichment_updated_at``;
* a column that has a value keeps it; a row whose columns would not change is not
  written; an unmatched session keeps NULLs: no sentinel values.

Malformed JSON (possible on SQLite, where JSON is text) is guarded with
``json_valid`` inside ``CASE`` (which SQLite evaluates lazily), so one bad row never
aborts a batch: it simply has no IP from that source.

Which rows a range statement looks at: the walk takes every session of the range that
lacks any snapshot column (``NEEDS_SNAPSHOT``); the catch-up pass takes only those
without ``source_ip`` (``CATCHUP_NEEDS``). Every session the walk matched has a
``source_ip``, so what the catch-up finds are the unmatched sessions and the ones
inserted behind the walk, without resolving again the ~40% of matched sessions whose
inventory row lacks a country, a type or a date. The mapping is the same in both.

Ranges are of ``session_id`` (both dialects) or, on SQLite, of ``rowid``: the table's
physical order, so that a batch reads and rewrites neighbouring pages instead of
rows scattered over the whole file (session ids are random). SQLite's
``UPDATE ... FROM`` joins back on ``rowid``, which is stable inside the batch's
``BEGIN IMMEDIATE`` transaction; PostgreSQL's joins back on the ``ctid`` that the
same statement read (``JOIN_BACK``), a TID scan instead of a primary-key lookup per row.
"""

from __future__ import annotations

from sqlalchemy import TextClause, text

from cowrieprocessor.backfill.progress import PROGRESS_TABLE
from cowrieprocessor.backfill.shape import OFFLINE, JsonColumn, JsonTypes

TABLE = "session_summaries"
NEEDS_SNAPSHOT = (
    "(s.source_ip IS NULL OR s.snapshot_asn IS NULL OR s.snapshot_country IS NULL "
    "OR s.snapshot_ip_type IS NULL OR s.enrichment_at IS NULL)"
)
CATCHUP_NEEDS = "(s.source_ip IS NULL)"
HAS_SNAPSHOT = (
    "(s.source_ip IS NOT NULL OR s.snapshot_asn IS NOT NULL OR s.snapshot_country IS NOT NULL "
    "OR s.snapshot_ip_type IS NOT NULL OR s.enrichment_at IS NOT NULL)"
)


def _would_change(ip: str, asn: str, country: str, ip_type: str, at: str) -> str:
    """A NULL column (of these five, as named) that the inventory row ``m`` would fill."""
    return f"""(
      {ip} IS NULL
      OR ({asn} IS NULL AND m.current_asn IS NOT NULL)
      OR ({country} IS NULL AND m.country IS NOT NULL)
      OR ({ip_type} IS NULL AND m.ip_type IS NOT NULL)
      OR ({at} IS NULL AND m.enrichment_updated_at IS NOT NULL))"""


WOULD_CHANGE = _would_change(
    "s.source_ip", "s.snapshot_asn", "s.snapshot_country", "s.snapshot_ip_type", "s.enrichment_at"
)
SET_NULL_ONLY = """
    source_ip = COALESCE(s.source_ip, m.ip_address),
    snapshot_asn = COALESCE(s.snapshot_asn, m.current_asn),
    snapshot_country = COALESCE(s.snapshot_country, m.country),
    snapshot_ip_type = COALESCE(s.snapshot_ip_type, m.ip_type),
    enrichment_at = COALESCE(s.enrichment_at, m.enrichment_updated_at)"""


def range_predicate(has_lo: bool, has_hi: bool, column: str = "s.session_id") -> str:
    """``lo < key <= hi``, leaving out a missing bound (first / last range)."""
    parts = []
    if has_lo:
        parts.append(f"{column} > :lo")
    if has_hi:
        parts.append(f"{column} <= :hi")
    return " AND ".join(parts) or "TRUE"


# --- a table's name in a statement ---------------------------------------------------


def in_text(table: str) -> str:
    """A table's name for the ``text()`` statements below: ``session_summaries``, or a
    partition as PostgreSQL prints its regclass (quoted by ``quote_ident`` where it needs
    it). Its ``:`` is escaped, or ``text()`` would read ``":x"`` as a bind parameter; the
    quotes around such a name are PostgreSQL's, so the name stays one identifier."""
    return table.replace(":", "\\:")


# --- walking the key space ---------------------------------------------------------


def next_bound(has_lo: bool, table: str = TABLE) -> TextClause:
    """The key ``:n`` places after ``:lo``: the inclusive upper bound of the next range.

    An index-only walk of ``:n`` entries of the primary key starting at the previous
    bound; never an OFFSET from the start of the table.
    """
    where = "WHERE session_id > :lo " if has_lo else ""
    return text(
        f"SELECT session_id FROM {in_text(table)} {where}ORDER BY session_id LIMIT 1 OFFSET :offset"
    )


def next_rowid_bound(has_lo: bool) -> TextClause:
    """SQLite: the ``rowid`` (and its session) ``:n`` rows after ``:lo``, in table order.

    A walk of the table's own b-tree from the previous bound; the session id comes
    along so that the position can be checked later (see ``ROWID_OF``).
    """
    where = "WHERE rowid > :lo " if has_lo else ""
    return text(
        f"SELECT rowid, session_id FROM {TABLE} {where}ORDER BY rowid LIMIT 1 OFFSET :offset"
    )


# SQLite: where a session sits now. VACUUM may renumber the rowids of a table without an
# INTEGER PRIMARY KEY; a rowid position is trusted only while its session still has it.
ROWID_OF = text(f"SELECT rowid FROM {TABLE} WHERE session_id = :sid")


def catchup_keys(has_lo: bool, table: str = TABLE) -> TextClause:
    """The keys of the sessions without ``source_ip`` after ``:lo`` (one sequential scan
    and a sort of what it finds), at most ``:limit``: the catch-up's list."""
    after = "AND session_id > :lo " if has_lo else ""
    return text(
        f"SELECT session_id FROM {in_text(table)} WHERE source_ip IS NULL {after}"
        "ORDER BY session_id LIMIT :limit"
    )


def count_range(
    has_lo: bool, has_hi: bool, column: str = "s.session_id", table: str = TABLE
) -> TextClause:
    return text(
        f"SELECT count(*) FROM {in_text(table)} s WHERE {range_predicate(has_lo, has_hi, column)}"
    )


# --- PostgreSQL --------------------------------------------------------------------

# The IP sources in the canonical order; `src` in a resolved row is the 1-based position
# of the source that gave its IP (cowrie-db check reports how many each one resolves).
IP_SOURCES = ("source_ip", "session_metadata", "dshield", "raw_events")

# snapshot_ip_type from the inventory's spur types: a list is ranked by the loader's
# priority, then list order. Fixed text from this constant, never a value from a row.
SPUR_PRIORITY = ("VPN", "TOR", "PROXY", "DATACENTER", "RESIDENTIAL", "MOBILE")


def _priority_case(value: str) -> str:
    whens = " ".join(f"WHEN '{t}' THEN {n}" for n, t in enumerate(SPUR_PRIORITY))
    return f"CASE {value} {whens} ELSE {len(SPUR_PRIORITY)} END"


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
                   ORDER BY {_priority_case("t.value #>> '{}'")}, t.n
                   LIMIT 1)
           END"""


def _pg_candidates(se: JsonColumn, range_sql: str, needs: str, table: str, extra: str = "") -> str:
    """The range's sessions that need a snapshot: key, the five columns as they are, the
    IPs of the two enrichment sources (``extra``: more columns, fixed SQL)."""
    return f"""SELECT s.session_id, {extra}s.source_ip AS old_ip, s.snapshot_asn AS old_asn,
           s.snapshot_country AS old_country, s.snapshot_ip_type AS old_type,
           s.enrichment_at AS old_at,
           {_pg_text(se, "-> 'session_metadata'", "source_ip")} AS meta_ip,
           {_pg_text(se, "-> 'dshield' -> 'ip'", "number")} AS dshield_ip
    FROM {in_text(table)} s
    WHERE {range_sql} AND {needs}"""


def pg_resolve(json: JsonTypes, range_sql: str, needs: str, table: str = TABLE) -> str:
    """The CTEs ``cand``, ``ev``, ``resolved``, ``matched`` of one range (see module doc).

    Every lookup is one index probe per candidate, whatever the sizes of the tables and
    of the batch: the earliest ``raw_events`` IP and the inventory row are ``LATERAL``
    subqueries with ``LIMIT 1`` (``ip_address`` is the inventory's key, so the limit
    changes nothing but the plan), which PostgreSQL cannot turn into a hash join over a
    scan of the whole table. Without them the planner did exactly that on small tables
    or large batches (60K sessions, ranges of 5,000 keys: a scan of all of
    ``ip_inventory`` per batch), and would on any table whose statistics are stale.
    """
    se, ev, inv = json.columns()
    return f"""
WITH cand AS (
    {_pg_candidates(se, range_sql, needs, table, "s.ctid AS row_ctid, ")}
),
ev AS (
    SELECT c.session_id, x.ev_ip
    FROM cand c
    CROSS JOIN LATERAL (
        SELECT lower(btrim({ev.expr} ->> 'src_ip')) AS ev_ip
        FROM raw_events e
        WHERE e.session_id = c.session_id
          AND {ev.typeof("-> 'src_ip'")} = 'string'
          AND btrim({ev.expr} ->> 'src_ip') <> ''
        ORDER BY e.event_timestamp ASC NULLS LAST, e.id
        LIMIT 1
    ) x
    WHERE c.old_ip IS NULL AND c.meta_ip IS NULL AND c.dshield_ip IS NULL
),
resolved AS (
    SELECT c.*, COALESCE(c.old_ip, c.meta_ip, c.dshield_ip, ev.ev_ip) AS ip,
           CASE WHEN c.old_ip IS NOT NULL THEN 1 WHEN c.meta_ip IS NOT NULL THEN 2
                WHEN c.dshield_ip IS NOT NULL THEN 3 WHEN ev.ev_ip IS NOT NULL THEN 4
           END AS src
    FROM cand c LEFT JOIN ev ON ev.session_id = c.session_id
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

# What the UPDATE wrote into a column that was NULL (else NULL): the rollback record.
WRITTEN = """s.session_id,
        CASE WHEN m.old_ip IS NULL THEN s.source_ip END AS w_ip,
        CASE WHEN m.old_asn IS NULL THEN s.snapshot_asn END AS w_asn,
        CASE WHEN m.old_country IS NULL THEN s.snapshot_country END AS w_country,
        CASE WHEN m.old_type IS NULL THEN s.snapshot_ip_type END AS w_type,
        CASE WHEN m.old_at IS NULL THEN s.enrichment_at END AS w_at"""


def pg_backfill(
    json: JsonTypes,
    has_lo: bool,
    has_hi: bool,
    needs: str = NEEDS_SNAPSHOT,
    record: bool = True,
    table: str = TABLE,
) -> TextClause:
    """One range: resolve, update what would change, record it, and count: one round trip.

    With ``record``, what the UPDATE wrote goes into the rollback record (one row per
    batch, see :mod:`cowrieprocessor.backfill.record`) in the same statement, so in the
    same transaction: the record can never miss a committed write. Bind ``:job``.
    """
    resolve = pg_resolve(json, range_predicate(has_lo, has_hi), needs, table)
    returning = WRITTEN if record else "1"
    rec = f",\n{PG_RECORD_CTE}" if record else ""
    return text(
        f"""{resolve},
upd AS (
    UPDATE {in_text(table)} AS s SET {SET_NULL_ONLY}
    FROM matched m
    WHERE {JOIN_BACK} AND {WOULD_CHANGE}
    RETURNING {returning}
){rec}
SELECT {PG_COUNTS},
    (SELECT count(*) FROM upd) AS updated"""
    )


def pg_dry_run(
    json: JsonTypes, has_lo: bool, has_hi: bool, needs: str = NEEDS_SNAPSHOT, table: str = TABLE
) -> TextClause:
    """The same resolution as :func:`pg_backfill`, counting what it would update and
    how many sessions each IP source resolves."""
    resolve = pg_resolve(json, range_predicate(has_lo, has_hi), needs, table)
    return text(
        f"""{resolve}
SELECT {PG_COUNTS},{PG_SOURCE_COUNTS},
    (SELECT count(*) FROM matched m JOIN {in_text(table)} s ON {JOIN_BACK}
      WHERE {WOULD_CHANGE}) AS updated"""
    )


# --- PostgreSQL, the join-back by key (Citus; ``join_back=key``) ----------------------
#
# The same mapping without ``ctid``, without CTEs and without LIMIT in a subquery, so that
# Citus can push every statement down to the shards when session_summaries and
# raw_events are distributed by session_id and ip_inventory is a reference table
# (docs/scale-out.md): the range predicate is on session_id, the earliest raw_events IP
# is a LATERAL aggregate correlated on session_id (no LIMIT), the inventory is a plain
# join, no function is volatile. Three statements a
# batch instead of one: the counts, the UPDATE, and the rollback record's row, written
# from the UPDATE's RETURNING with bound arrays (the record lives on the coordinator).
#
# The join-back cannot check a row version as the ctid does, so it checks the values:
# the UPDATE writes a row only while its five columns still hold what the resolution
# read (``UNCHANGED``; re-checked on the newest version when a concurrent writer got
# there first), so the old values in the record are exactly the values replaced, and a
# row changed meanwhile is left for the catch-up pass, as on the ctid path.


def _pg_spur_type_flat(col: JsonColumn) -> str:
    """:func:`_pg_spur_type` without a subquery: a type of SPUR_PRIORITY present in the
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


def pg_resolve_flat(json: JsonTypes, range_sql: str, needs: str, table: str = TABLE) -> str:
    """One range's candidates with their IP and inventory row (NULLs when unmatched), as
    one subquery: the key path's resolution (see above).

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
        {_pg_candidates(se, range_sql, needs, table)}
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


# The row still holds what the resolution read (see above).
UNCHANGED = """s.source_ip IS NOT DISTINCT FROM m.old_ip
      AND s.snapshot_asn IS NOT DISTINCT FROM m.old_asn
      AND s.snapshot_country IS NOT DISTINCT FROM m.old_country
      AND s.snapshot_ip_type IS NOT DISTINCT FROM m.old_type
      AND s.enrichment_at IS NOT DISTINCT FROM m.old_at"""
# WOULD_CHANGE, judged on the values the resolution read.
WOULD_CHANGE_READ = _would_change(
    "m.old_ip", "m.old_asn", "m.old_country", "m.old_type", "m.old_at"
)


def pg_key_counts(
    json: JsonTypes, has_lo: bool, has_hi: bool, needs: str = NEEDS_SNAPSHOT, table: str = TABLE
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
    json: JsonTypes, has_lo: bool, has_hi: bool, needs: str = NEEDS_SNAPSHOT, table: str = TABLE
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


# Per batch transaction. JIT off: a batch's estimated cost can cross jit_above_cost, and
# compiling its plan (tens to hundreds of ms) would cost more than running it.
# synchronous_commit off: a batch's commit does not wait for its WAL to reach the disk
# (or a synchronous standby). Nothing is lost that a rerun does not redo: a batch and its
# progress row commit atomically, so after a server crash that loses the last commits
# (at most 3 x wal_writer_delay) the progress row points before them, and the final
# stamp of the revision, a synchronous commit, flushes every batch's WAL before it.
PG_SET_TIMEOUTS = text(
    "SELECT set_config('lock_timeout', :lock_timeout, true), "
    "set_config('statement_timeout', :statement_timeout, true), "
    "set_config('jit', 'off', true), set_config('synchronous_commit', 'off', true)"
)


# --- SQLite ------------------------------------------------------------------------

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
                       ORDER BY {_priority_case("t.value")}, t.key
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


# --- the rollback record -------------------------------------------------------------
# What each batch wrote: one row per batch, in the batch's own transaction. The columns
# hold, per session, the value written into each column that was NULL (else NULL).
# See cowrieprocessor.backfill.record for why and how the downgrade uses it.

RECORD_TABLE = "cowrie_backfill_writes"

PG_RECORD_DDL = text(
    f"""CREATE TABLE IF NOT EXISTS {RECORD_TABLE} (
    id bigserial PRIMARY KEY,
    job varchar(64) NOT NULL,
    n integer NOT NULL,
    session_ids text[] NOT NULL,
    source_ips text[] NOT NULL,
    snapshot_asns bigint[] NOT NULL,
    snapshot_countries text[] NOT NULL,
    snapshot_ip_types text[] NOT NULL,
    enrichment_ats timestamptz[] NOT NULL,
    undone integer NOT NULL DEFAULT 0,
    written_at timestamptz NOT NULL DEFAULT now())"""
)
RECORD_ARRAYS = (
    "session_ids",
    "source_ips",
    "snapshot_asns",
    "snapshot_countries",
    "snapshot_ip_types",
    "enrichment_ats",
)
PG_HAS_LZ4 = text(
    "SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'"
)
PG_RECORD_LZ4 = text(
    f"ALTER TABLE {RECORD_TABLE} "
    + ", ".join(f"ALTER COLUMN {column} SET COMPRESSION lz4" for column in RECORD_ARRAYS)
)
PG_RECORD_UNCOMPRESSED = text(
    f"ALTER TABLE {RECORD_TABLE} "
    + ", ".join(f"ALTER COLUMN {column} SET STORAGE EXTERNAL" for column in RECORD_ARRAYS)
)
SQLITE_RECORD_DDL = text(
    f"""CREATE TABLE IF NOT EXISTS {RECORD_TABLE} (
    id INTEGER PRIMARY KEY,
    job VARCHAR(64) NOT NULL,
    n INTEGER NOT NULL,
    rows TEXT NOT NULL,
    undone INTEGER NOT NULL DEFAULT 0,
    written_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)"""
)

PG_RECORD_INSERT = f"""INSERT INTO {RECORD_TABLE} (job, n, session_ids, source_ips, snapshot_asns,
                                snapshot_countries, snapshot_ip_types, enrichment_ats)
    SELECT :job, count(*), array_agg(session_id), array_agg(w_ip), array_agg(w_asn),
           array_agg(w_country), array_agg(w_type), array_agg(w_at)
    FROM upd HAVING count(*) > 0"""
PG_RECORD_CTE = f"rec AS (\n    {PG_RECORD_INSERT}\n    RETURNING 1\n)"
# The key path's record row: what its UPDATE returned, as bound arrays (one per column).
PG_RECORD_VALUES = text(
    f"""INSERT INTO {RECORD_TABLE} (job, n, session_ids, source_ips, snapshot_asns,
                                snapshot_countries, snapshot_ip_types, enrichment_ats)
    VALUES (:job, :n, CAST(:session_ids AS text[]), CAST(:source_ips AS text[]),
            CAST(:snapshot_asns AS bigint[]), CAST(:snapshot_countries AS text[]),
            CAST(:snapshot_ip_types AS text[]), CAST(:enrichment_ats AS timestamptz[]))"""
)

_SQLITE_WRITTEN_WHERE = """(b.old_ip IS NULL AND s.source_ip IS NOT NULL)
   OR (b.old_asn IS NULL AND s.snapshot_asn IS NOT NULL)
   OR (b.old_country IS NULL AND s.snapshot_country IS NOT NULL)
   OR (b.old_type IS NULL AND s.snapshot_ip_type IS NOT NULL)
   OR (b.old_at IS NULL AND s.enrichment_at IS NOT NULL)"""

# After SQLITE_UPDATE, in the same BEGIN IMMEDIATE transaction (no other writer).
SQLITE_RECORD = text(
    f"""INSERT INTO {RECORD_TABLE} (job, n, rows)
SELECT :job, count(*), json_group_array(json_array(s.session_id,
       CASE WHEN b.old_ip IS NULL THEN s.source_ip END,
       CASE WHEN b.old_asn IS NULL THEN s.snapshot_asn END,
       CASE WHEN b.old_country IS NULL THEN s.snapshot_country END,
       CASE WHEN b.old_type IS NULL THEN s.snapshot_ip_type END,
       CASE WHEN b.old_at IS NULL THEN s.enrichment_at END))
FROM temp.cowrie_batch_rows b JOIN session_summaries s ON s.rowid = b.rid
WHERE {_SQLITE_WRITTEN_WHERE}
HAVING count(*) > 0"""
)

# NULL a recorded value only while the column still holds it: a value written since by
# someone else (the loader) differs, and survives.
UNWRITE = """
    source_ip = CASE WHEN s.source_ip = w.ip THEN NULL ELSE s.source_ip END,
    snapshot_asn = CASE WHEN s.snapshot_asn = w.asn THEN NULL ELSE s.snapshot_asn END,
    snapshot_country = CASE WHEN s.snapshot_country = w.country THEN NULL
                            ELSE s.snapshot_country END,
    snapshot_ip_type = CASE WHEN s.snapshot_ip_type = w.ip_type THEN NULL
                            ELSE s.snapshot_ip_type END,
    enrichment_at = CASE WHEN s.enrichment_at = w.at THEN NULL ELSE s.enrichment_at END"""
STILL_WRITTEN = """(s.source_ip = w.ip OR s.snapshot_asn = w.asn OR s.snapshot_country = w.country
       OR s.snapshot_ip_type = w.ip_type OR s.enrichment_at = w.at)"""

# The entries lo+1..hi (1-based) of the record rows ``which``: a downgrade batch may be a
# slice of one record row (batch_size), so the undo is as finely batched as asked.
_PG_RECORD_ROWS = """SELECT u.* FROM {table} r,
         unnest(r.session_ids[({lo} + 1):({hi})], r.source_ips[({lo} + 1):({hi})],
                r.snapshot_asns[({lo} + 1):({hi})], r.snapshot_countries[({lo} + 1):({hi})],
                r.snapshot_ip_types[({lo} + 1):({hi})], r.enrichment_ats[({lo} + 1):({hi})])
           AS u(session_id, ip, asn, country, ip_type, at)
    WHERE {which}"""

_SQLITE_RECORD_ROWS = """SELECT json_extract(j.value, '$[0]') AS session_id,
           json_extract(j.value, '$[1]') AS ip, json_extract(j.value, '$[2]') AS asn,
           json_extract(j.value, '$[3]') AS country, json_extract(j.value, '$[4]') AS ip_type,
           json_extract(j.value, '$[5]') AS at
    FROM {table} r, json_each(r.rows) AS j
    WHERE {which} AND j.key >= {lo} AND j.key < {hi}"""


def unwrite(
    dialect: str, which: str = "r.id = :id", lo: str = ":lo", hi: str = ":hi"
) -> TextClause:
    """NULL what the record rows ``which`` (fixed SQL: one row by ``:id``, or offline
    every row) say the backfill wrote in their entries ``lo`` to ``hi`` (fixed SQL or
    bound parameters), where it is still there."""
    template = _PG_RECORD_ROWS if dialect == "postgresql" else _SQLITE_RECORD_ROWS
    rows = template.format(table=RECORD_TABLE, which=which, lo=lo, hi=hi)
    return text(
        f"""UPDATE session_summaries AS s SET {UNWRITE}
FROM ({rows}) AS w
WHERE s.session_id = w.session_id AND {STILL_WRITTEN}"""
    )


OLDEST_RECORD = text(f"SELECT id, n, undone FROM {RECORD_TABLE} ORDER BY id LIMIT 1")
SET_UNDONE = text(f"UPDATE {RECORD_TABLE} SET undone = :undone WHERE id = :id")
RECORD_HAS_JOB = text(f"SELECT 1 FROM {RECORD_TABLE} WHERE job = :job")
PG_RECORD_MARKER = text(
    f"INSERT INTO {RECORD_TABLE} (job, n, session_ids, source_ips, snapshot_asns, "
    "snapshot_countries, snapshot_ip_types, enrichment_ats) "
    "VALUES (:job, 0, '{}', '{}', '{}', '{}', '{}', '{}')"
)
SQLITE_RECORD_MARKER = text(f"INSERT INTO {RECORD_TABLE} (job, n, rows) VALUES (:job, 0, '[]')")
COUNT_RECORDED = text(f"SELECT count(*), coalesce(sum(n), 0) FROM {RECORD_TABLE}")
DELETE_RECORD = text(f"DELETE FROM {RECORD_TABLE} WHERE id = :id")
DELETE_RECORDS = text(f"DELETE FROM {RECORD_TABLE}")


# --- clearing everything (`cowrie-db clear --all`, and a downgrade without a record) ---


def clear_snapshots(
    has_lo: bool, has_hi: bool, column: str = "s.session_id", table: str = TABLE
) -> TextClause:
    """NULL the five columns in one range, touching only rows that have a value."""
    return text(
        f"""UPDATE {in_text(table)} AS s SET
    source_ip = NULL, snapshot_asn = NULL, snapshot_country = NULL,
    snapshot_ip_type = NULL, enrichment_at = NULL
WHERE {range_predicate(has_lo, has_hi, column)} AND {HAS_SNAPSHOT}"""
    )


# --- counts for the start of a run ----------------------------------------------------

COUNT_SESSIONS = text(f"SELECT count(*) FROM {TABLE}")
COUNT_NEEDING = text(f"SELECT count(*) FROM {TABLE} s WHERE {NEEDS_SNAPSHOT}")
COUNT_INVENTORY = text("SELECT count(*) FROM ip_inventory")
COUNT_WITH_VALUES = text(f"SELECT count(*) FROM {TABLE} s WHERE {HAS_SNAPSHOT}")


# --- offline mode (`alembic upgrade head --sql`) --------------------------------------

_PG_OFFLINE_LOOP = """DO $cowrie$
DECLARE
    v_lo text := NULL;
    v_hi text;
    v_batch integer := 0;
BEGIN
    LOOP
        SELECT session_id INTO v_hi FROM session_summaries
        WHERE v_lo IS NULL OR session_id > v_lo
        ORDER BY session_id LIMIT 1 OFFSET :offset;
        {statement};
        v_batch := v_batch + 1;
        RAISE NOTICE 'batch %: session_id up to %', v_batch, coalesce(v_hi, '(end)');
        COMMIT;
        EXIT WHEN v_hi IS NULL;
        v_lo := v_hi;
    END LOOP;
END
$cowrie$"""

_PG_OFFLINE_RANGE = (
    "(v_lo IS NULL OR s.session_id > v_lo) AND (v_hi IS NULL OR s.session_id <= v_hi)"
)


def pg_offline_backfill(batch_size: int, job: str) -> list[TextClause]:
    """A DO block that a DBA can review and run: the same batches, each committed with
    its rollback record. The JSON columns are cast to jsonb (their types are unknown
    offline; see :mod:`cowrieprocessor.backfill.shape`).

    It must run outside a transaction block (psql's default autocommit), as Alembic's
    ``--sql`` output arranges by committing before it.
    """
    resolve = pg_resolve(OFFLINE, _PG_OFFLINE_RANGE, NEEDS_SNAPSHOT)
    update = f"""{resolve},
        upd AS (
            UPDATE session_summaries AS s SET {SET_NULL_ONLY}
            FROM matched m
            WHERE {JOIN_BACK} AND {WOULD_CHANGE}
            RETURNING {WRITTEN})
        {PG_RECORD_INSERT}"""
    loop = text(_PG_OFFLINE_LOOP.format(statement=update))
    return [PG_RECORD_DDL, loop.bindparams(offset=batch_size - 1, job=job)]


_PG_OFFLINE_UNWRITE = """DO $cowrie$
DECLARE
    v_id bigint;
BEGIN
    FOR v_id IN SELECT id FROM {table} ORDER BY id LOOP
        {statement};
        DELETE FROM {table} WHERE id = v_id;
        COMMIT;
    END LOOP;
END
$cowrie$"""


def offline_unwrite(dialect: str) -> TextClause:
    """Offline downgrade: undo what the record says, where it is still there."""
    if dialect == "postgresql":
        statement = str(unwrite(dialect, "r.id = v_id", "0", "r.n"))
        return text(_PG_OFFLINE_UNWRITE.format(table=RECORD_TABLE, statement=statement))
    return unwrite(dialect, "TRUE", "0", "r.n")


def sqlite_offline_backfill(job: str) -> list[TextClause]:
    """SQLite has no procedural SQL: the whole table in one transaction, same semantics."""
    return [
        SQLITE_RECORD_DDL,
        SQLITE_BATCH_TABLE,
        SQLITE_BATCH_CLEAR,
        sqlite_resolve(False, False),
        SQLITE_UPDATE,
        SQLITE_RECORD.bindparams(job=job),
        text("DROP TABLE temp.cowrie_batch_rows"),
    ]


def _pg_offline_timeouts(statements: list[TextClause], lock_timeout_ms: int) -> list[TextClause]:
    """``statements`` between the timeouts the online run sets, and their RESET.

    Online, each batch runs under ``lock_timeout`` and ``statement_timeout``. Offline, a
    DO block is one statement however many batches it commits, so a ``statement_timeout``
    would cut the whole run: it is set to 0, and ``lock_timeout`` bounds each batch's
    waits for a lock as online (a batch that cannot have its rows fails the run, which a
    rerun resumes, rather than queueing the loader behind it).
    """
    return [
        text("SET lock_timeout = :ms").bindparams(ms=lock_timeout_ms),
        text("SET statement_timeout = 0"),
        *statements,
        text("RESET statement_timeout"),
        text("RESET lock_timeout"),
    ]


def offline_backfill(
    dialect: str, batch_size: int, job: str, lock_timeout_ms: int
) -> list[TextClause]:
    """What ``alembic upgrade --sql`` prints for the data revision."""
    if dialect == "postgresql":
        return _pg_offline_timeouts(pg_offline_backfill(batch_size, job), lock_timeout_ms)
    return sqlite_offline_backfill(job)


def offline_undo(dialect: str, lock_timeout_ms: int) -> list[TextClause]:
    """What ``alembic downgrade --sql`` prints: undo the record, drop our two tables."""
    statements = [
        offline_unwrite(dialect),
        text(f"DROP TABLE IF EXISTS {RECORD_TABLE}"),
        text(f"DROP TABLE IF EXISTS {PROGRESS_TABLE}"),
    ]
    if dialect == "postgresql":
        return _pg_offline_timeouts(statements, lock_timeout_ms)
    return statements
