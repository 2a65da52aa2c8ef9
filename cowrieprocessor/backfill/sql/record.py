"""The rollback record's statements: its table, what each batch writes into it, the undo.

What each batch wrote: one row per batch, in the batch's own transaction. The columns
hold, per session, the value written into each column that was NULL (else NULL).
See :mod:`cowrieprocessor.backfill.rollback_record` for why and how the downgrade uses it.
"""

# Fixed fragments joined with f-strings, every value bound: see the package docstring.

from __future__ import annotations

from sqlalchemy import Dialect, TextClause, text

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


def pg_record_storage(dialect: Dialect, lz4: bool) -> TextClause:
    """PostgreSQL: the record's arrays compressed with lz4 where the server has it, else
    stored out of line uncompressed; the table's and each column's name quoted by
    ``dialect``."""
    quote = dialect.identifier_preparer.quote
    storage = "SET COMPRESSION lz4" if lz4 else "SET STORAGE EXTERNAL"
    columns = ", ".join(f"ALTER COLUMN {quote(column)} {storage}" for column in RECORD_ARRAYS)
    return text(f"ALTER TABLE {quote(RECORD_TABLE)} {columns}")


def drop_record(dialect: Dialect) -> TextClause:
    return text(f"DROP TABLE IF EXISTS {dialect.identifier_preparer.quote(RECORD_TABLE)}")


SQLITE_RECORD_DDL = text(
    f"""CREATE TABLE IF NOT EXISTS {RECORD_TABLE} (
    id INTEGER PRIMARY KEY,
    job VARCHAR(64) NOT NULL,
    n INTEGER NOT NULL,
    rows TEXT NOT NULL,
    undone INTEGER NOT NULL DEFAULT 0,
    written_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)"""
)


# What the UPDATE wrote into a column that was NULL (else NULL): the rollback record.
WRITTEN = """s.session_id,
        CASE WHEN m.old_ip IS NULL THEN s.source_ip END AS w_ip,
        CASE WHEN m.old_asn IS NULL THEN s.snapshot_asn END AS w_asn,
        CASE WHEN m.old_country IS NULL THEN s.snapshot_country END AS w_country,
        CASE WHEN m.old_type IS NULL THEN s.snapshot_ip_type END AS w_type,
        CASE WHEN m.old_at IS NULL THEN s.enrichment_at END AS w_at"""


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
