"""The backfill's SQL, one module, both dialects.

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
WOULD_CHANGE = """(
      s.source_ip IS NULL
      OR (s.snapshot_asn IS NULL AND m.current_asn IS NOT NULL)
      OR (s.snapshot_country IS NULL AND m.country IS NOT NULL)
      OR (s.snapshot_ip_type IS NULL AND m.ip_type IS NOT NULL)
      OR (s.enrichment_at IS NULL AND m.enrichment_updated_at IS NOT NULL))"""
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


# --- walking the key space ---------------------------------------------------------


def next_bound(has_lo: bool) -> TextClause:
    """The key ``:n`` places after ``:lo``: the inclusive upper bound of the next range.

    An index-only walk of ``:n`` entries of the primary key starting at the previous
    bound; never an OFFSET from the start of the table.
    """
    where = "WHERE session_id > :lo " if has_lo else ""
    return text(f"SELECT session_id FROM {TABLE} {where}ORDER BY session_id LIMIT 1 OFFSET :offset")


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


def count_range(has_lo: bool, has_hi: bool, column: str = "s.session_id") -> TextClause:
    return text(f"SELECT count(*) FROM {TABLE} s WHERE {range_predicate(has_lo, has_hi, column)}")


# --- PostgreSQL --------------------------------------------------------------------

PG_RESOLVE = """
WITH cand AS (
    SELECT s.session_id, s.ctid AS row_ctid,
           s.source_ip AS existing_ip,
           CASE WHEN jsonb_typeof(s.enrichment -> 'session_metadata' -> 'source_ip') = 'string'
                THEN NULLIF(lower(btrim(s.enrichment -> 'session_metadata' ->> 'source_ip')), '')
           END AS meta_ip
    FROM session_summaries s
    WHERE {range} AND {needs}
),
ev AS (
    SELECT DISTINCT ON (e.session_id)
           e.session_id, lower(btrim(e.payload ->> 'src_ip')) AS ev_ip
    FROM raw_events e
    JOIN cand c ON c.session_id = e.session_id
    WHERE c.existing_ip IS NULL AND c.meta_ip IS NULL
      AND jsonb_typeof(e.payload -> 'src_ip') = 'string'
      AND btrim(e.payload ->> 'src_ip') <> ''
    ORDER BY e.session_id, e.event_timestamp ASC NULLS LAST, e.id
),
resolved AS (
    SELECT c.session_id, c.row_ctid, COALESCE(c.existing_ip, c.meta_ip, ev.ev_ip) AS ip
    FROM cand c LEFT JOIN ev ON ev.session_id = c.session_id
),
matched AS (
    SELECT r.session_id, r.row_ctid, i.ip_address, i.current_asn,
           CASE WHEN i.geo_country ~ '^[A-Z]{{2}}$' AND i.geo_country <> 'XX'
                THEN i.geo_country END AS country,
           NULLIF(i.ip_types[1], '') AS ip_type,
           i.enrichment_updated_at
    FROM resolved r JOIN ip_inventory i ON i.ip_address = r.ip
)"""

# The row a candidate was read from, found again by its ctid (a TID Scan, no index
# lookup; the statement's snapshot keeps that version from being vacuumed away), and
# checked by its key all the same.
JOIN_BACK = "s.ctid = m.row_ctid AND s.session_id = m.session_id"

PG_COUNTS = """
    (SELECT count(*) FROM resolved) AS candidates,
    (SELECT count(*) FROM resolved WHERE ip IS NULL) AS no_ip,
    (SELECT count(*) FROM matched) AS matched"""


def pg_backfill(has_lo: bool, has_hi: bool, needs: str = NEEDS_SNAPSHOT) -> TextClause:
    """One range: resolve, update what would change, and count, in one round trip."""
    resolve = PG_RESOLVE.format(range=range_predicate(has_lo, has_hi), needs=needs)
    return text(
        f"""{resolve},
upd AS (
    UPDATE session_summaries AS s SET {SET_NULL_ONLY}
    FROM matched m
    WHERE {JOIN_BACK} AND {WOULD_CHANGE}
    RETURNING 1
)
SELECT {PG_COUNTS},
    (SELECT count(*) FROM upd) AS updated"""
    )


def pg_dry_run(has_lo: bool, has_hi: bool, needs: str = NEEDS_SNAPSHOT) -> TextClause:
    """The same resolution as :func:`pg_backfill`, counting what it would update."""
    resolve = PG_RESOLVE.format(range=range_predicate(has_lo, has_hi), needs=needs)
    return text(
        f"""{resolve}
SELECT {PG_COUNTS},
    (SELECT count(*) FROM matched m JOIN session_summaries s ON {JOIN_BACK}
      WHERE {WOULD_CHANGE}) AS updated"""
    )


# Per batch transaction. JIT off: a batch's estimated cost can cross jit_above_cost, and
# compiling its plan (tens to hundreds of ms) would cost more than running it.
PG_SET_TIMEOUTS = text(
    "SELECT set_config('lock_timeout', :lock_timeout, true), "
    "set_config('statement_timeout', :statement_timeout, true), "
    "set_config('jit', 'off', true)"
)


# --- SQLite ------------------------------------------------------------------------

# One row per candidate of the batch: its rowid in session_summaries (the temp table's own
# rowid, so no index to maintain), its key and its canonical IP.
SQLITE_BATCH_TABLE = text(
    "CREATE TEMP TABLE IF NOT EXISTS cowrie_batch_rows "
    "(rid INTEGER PRIMARY KEY, session_id TEXT, ip TEXT)"
)
SQLITE_BATCH_CLEAR = text("DELETE FROM temp.cowrie_batch_rows")

_SQLITE_RESOLVE = """
INSERT INTO temp.cowrie_batch_rows (rid, session_id, ip)
SELECT c.rid, c.session_id,
       COALESCE(c.existing_ip, c.meta_ip, (
           SELECT CASE WHEN json_valid(e.payload) THEN
                      CASE WHEN json_type(e.payload, '$.src_ip') = 'text'
                           THEN NULLIF(lower(trim(json_extract(e.payload, '$.src_ip'))), '')
                      END
                  END AS ev_ip
           FROM raw_events e
           WHERE e.session_id = c.session_id AND ev_ip IS NOT NULL
           ORDER BY e.event_timestamp IS NULL, e.event_timestamp, e.id
           LIMIT 1))
FROM (
    SELECT s.rowid AS rid,
           s.session_id,
           s.source_ip AS existing_ip,
           CASE WHEN json_valid(s.enrichment) THEN
               CASE WHEN json_type(s.enrichment, '$.session_metadata.source_ip') = 'text'
                    THEN NULLIF(lower(trim(json_extract(s.enrichment,
                                                        '$.session_metadata.source_ip'))), '')
               END
           END AS meta_ip
    FROM session_summaries s
    WHERE {range} AND {needs}
) AS c"""

SQLITE_COUNTS = text(
    """SELECT count(*) AS candidates,
       coalesce(sum(b.ip IS NULL), 0) AS no_ip,
       coalesce(sum(i.ip_address IS NOT NULL), 0) AS matched
FROM temp.cowrie_batch_rows b LEFT JOIN ip_inventory i ON i.ip_address = b.ip"""
)

_SQLITE_MATCHED = """(
    SELECT b.rid, b.session_id, i.ip_address, i.current_asn,
           CASE WHEN i.geo_country GLOB '[A-Z][A-Z]' AND i.geo_country <> 'XX'
                THEN i.geo_country END AS country,
           CASE WHEN json_valid(i.ip_types) THEN
               CASE WHEN json_type(i.ip_types, '$[0]') = 'text'
                    THEN NULLIF(json_extract(i.ip_types, '$[0]'), '') END
           END AS ip_type,
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


# --- clearing (the downgrade) --------------------------------------------------------


def clear_snapshots(has_lo: bool, has_hi: bool, column: str = "s.session_id") -> TextClause:
    """NULL the five columns in one range, touching only rows that have a value."""
    return text(
        f"""UPDATE session_summaries AS s SET
    source_ip = NULL, snapshot_asn = NULL, snapshot_country = NULL,
    snapshot_ip_type = NULL, enrichment_at = NULL
WHERE {range_predicate(has_lo, has_hi, column)} AND {HAS_SNAPSHOT}"""
    )


# --- counts for the start of a run ----------------------------------------------------

COUNT_SESSIONS = text(f"SELECT count(*) FROM {TABLE}")
COUNT_NEEDY = text(f"SELECT count(*) FROM {TABLE} s WHERE {NEEDS_SNAPSHOT}")
COUNT_INVENTORY = text("SELECT count(*) FROM ip_inventory")


# --- offline mode (`alembic upgrade head --sql`) --------------------------------------

_PG_OFFLINE_LOOP = """DO $cowrie$
DECLARE
    v_lo text := NULL;
    v_hi text;
    v_rows bigint;
    v_batch integer := 0;
BEGIN
    LOOP
        SELECT session_id INTO v_hi FROM session_summaries
        WHERE v_lo IS NULL OR session_id > v_lo
        ORDER BY session_id LIMIT 1 OFFSET :offset;
        {statement};
        GET DIAGNOSTICS v_rows = ROW_COUNT;
        v_batch := v_batch + 1;
        RAISE NOTICE 'batch %: % rows, session_id up to %', v_batch, v_rows,
            coalesce(v_hi, '(end)');
        COMMIT;
        EXIT WHEN v_hi IS NULL;
        v_lo := v_hi;
    END LOOP;
END
$cowrie$"""

_PG_OFFLINE_RANGE = (
    "(v_lo IS NULL OR s.session_id > v_lo) AND (v_hi IS NULL OR s.session_id <= v_hi)"
)


def pg_offline_backfill(batch_size: int) -> TextClause:
    """A DO block that a DBA can review and run: the same batches, committed one by one.

    It must run outside a transaction block (psql's default autocommit), as Alembic's
    ``--sql`` output arranges by committing before it.
    """
    resolve = PG_RESOLVE.format(range=_PG_OFFLINE_RANGE, needs=NEEDS_SNAPSHOT)
    update = f"""{resolve}
        UPDATE session_summaries AS s SET {SET_NULL_ONLY}
        FROM matched m
        WHERE {JOIN_BACK} AND {WOULD_CHANGE}"""
    return text(_PG_OFFLINE_LOOP.format(statement=update)).bindparams(offset=batch_size - 1)


def pg_offline_clear(batch_size: int) -> TextClause:
    update = f"""UPDATE session_summaries AS s SET
            source_ip = NULL, snapshot_asn = NULL, snapshot_country = NULL,
            snapshot_ip_type = NULL, enrichment_at = NULL
        WHERE {_PG_OFFLINE_RANGE} AND {HAS_SNAPSHOT}"""
    return text(_PG_OFFLINE_LOOP.format(statement=update)).bindparams(offset=batch_size - 1)


def sqlite_offline_backfill() -> list[TextClause]:
    """SQLite has no procedural SQL: the whole table in one transaction, same semantics."""
    return [
        SQLITE_BATCH_TABLE,
        SQLITE_BATCH_CLEAR,
        sqlite_resolve(False, False),
        SQLITE_UPDATE,
        text("DROP TABLE temp.cowrie_batch_rows"),
    ]


def offline_clear_all() -> TextClause:
    return clear_snapshots(False, False)
