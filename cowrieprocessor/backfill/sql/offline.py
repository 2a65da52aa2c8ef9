"""Offline mode (``alembic upgrade head --sql`` / ``downgrade --sql``): what the data
revision prints for a DBA to review and run, the same batches and rollback record."""

# Fixed fragments joined with f-strings, every value bound: see the package docstring.

from __future__ import annotations

from sqlalchemy import Dialect, TextClause, text

from cowrieprocessor.backfill.json_storage import OFFLINE
from cowrieprocessor.backfill.progress import PROGRESS_TABLE
from cowrieprocessor.backfill.sql.record import (
    PG_RECORD_DDL,
    PG_RECORD_INSERT,
    RECORD_TABLE,
    SQLITE_RECORD,
    SQLITE_RECORD_DDL,
    WRITTEN,
    drop_record,
    unwrite,
)
from cowrieprocessor.backfill.sql.resolve_pg import JOIN_BACK, pg_resolve
from cowrieprocessor.backfill.sql.resolve_sqlite import (
    SQLITE_BATCH_CLEAR,
    SQLITE_BATCH_TABLE,
    SQLITE_UPDATE,
    sqlite_resolve,
)
from cowrieprocessor.backfill.sql.rules import NEEDS_SNAPSHOT, SET_NULL_ONLY, WOULD_CHANGE
from cowrieprocessor.backfill.sql.statistics import OFFLINE_ANALYZE

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
    offline; see :mod:`cowrieprocessor.backfill.json_storage`).

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
    return [*OFFLINE_ANALYZE, PG_RECORD_DDL, loop.bindparams(offset=batch_size - 1, job=job)]


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


def offline_unwrite(dialect: Dialect) -> TextClause:
    """Offline downgrade: undo what the record says, where it is still there (the
    record's name quoted by ``dialect``)."""
    if dialect.name == "postgresql":
        statement = str(unwrite(dialect.name, "r.id = v_id", "0", "r.n"))
        table = dialect.identifier_preparer.quote(RECORD_TABLE)
        return text(_PG_OFFLINE_UNWRITE.format(table=table, statement=statement))
    return unwrite(dialect.name, "TRUE", "0", "r.n")


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


def offline_undo(dialect: Dialect, lock_timeout_ms: int) -> list[TextClause]:
    """What ``alembic downgrade --sql`` prints: undo the record, drop our two tables
    (their names quoted by ``dialect``, the one the migration context compiles for)."""
    progress = dialect.identifier_preparer.quote(PROGRESS_TABLE)
    statements = [
        offline_unwrite(dialect),
        drop_record(dialect),
        text(f"DROP TABLE IF EXISTS {progress}"),
    ]
    if dialect.name == "postgresql":
        return _pg_offline_timeouts(statements, lock_timeout_ms)
    return statements
