"""The rollback record: what the backfill wrote, so that a downgrade undoes exactly that.

Why: in the field, some sessions carry snapshot values from before the backfill (the
loader writes them at the time of the attack), and the loader keeps writing after it.
A downgrade that NULLed every snapshot would erase those, and the next upgrade would
refill them from today's inventory: other values than before. So each batch records,
in its own transaction and in the same statement as its UPDATE (PostgreSQL) or right
after it under the same write lock (SQLite), the value it wrote into each column that
was NULL. A crash can lose a batch, but never a batch's record without its writes.

Shape: one row per batch in ``cowrie_backfill_writes`` (``sql.RECORD_TABLE``): the
session ids and, per column, the value written or NULL; arrays on PostgreSQL, a JSON
array of ``[session_id, ip, asn, country, type, enrichment_at]`` on SQLite. One row of
a few thousand entries per batch costs a few per cent of the batch, compressed with lz4
where the server has it (docs/performance.md).

Undo (``alembic downgrade 0002_snapshot_columns``): the record rows oldest first, in
batches of at most the batch size (a slice of a row, or all of it), each in one
transaction: NULL each recorded value *while the column still holds it* (a value
someone else wrote since differs and survives), move the row's ``undone`` mark (or
delete the row once all of it is undone), save progress. So an interrupted downgrade
resumes where it stopped, and a value never recorded (written before the upgrade, or
by the loader) is never touched.

A database backfilled before this record existed has no record table: the downgrade
says so and clears all five columns of every session, as the first release did.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import Connection

from cowrieprocessor.backfill import sql

RECORD_TABLE = sql.RECORD_TABLE


def exists(conn: Connection) -> bool:
    return sa.inspect(conn).has_table(RECORD_TABLE)


def ensure_table(conn: Connection) -> None:
    """Create the record table if missing (inside the caller's transaction).

    PostgreSQL compresses the record's arrays (TOAST) with pglz by default: measured at
    600K sessions, that cost 16% of the walk, while lz4 (PostgreSQL 14+, when the server
    is built with it) or no compression at all (``STORAGE EXTERNAL``, PostgreSQL 13)
    cost nothing measurable (docs/performance.md). lz4 keeps the table half the size.
    """
    if conn.dialect.name != "postgresql":
        conn.execute(sql.SQLITE_RECORD_DDL)
        return
    created = not exists(conn)
    conn.execute(sql.PG_RECORD_DDL)
    if created:
        lz4 = conn.execute(sql.PG_HAS_LZ4).scalar()
        conn.execute(sql.pg_record_storage(conn.dialect, bool(lz4)))


def drop_table(conn: Connection) -> None:
    conn.execute(sql.drop_record(conn.dialect))


def pending(conn: Connection) -> tuple[int, int]:
    """(record rows, recorded sessions) not yet undone; (0, 0) without a record table."""
    if not exists(conn):
        return 0, 0
    rows, sessions = conn.execute(sql.COUNT_RECORDED).one()
    return int(rows), int(sessions)


def undo_next(conn: Connection, limit: int) -> tuple[int, int, int] | None:
    """Undo up to ``limit`` entries of the oldest record row (in the caller's transaction);
    the row is deleted once all of it is undone.

    Returns (record row id, entries undone, session rows changed), or None when the
    record is empty.
    """
    row = conn.execute(sql.OLDEST_RECORD).first()
    if row is None:
        return None
    lo, hi = int(row.undone), min(int(row.n), int(row.undone) + max(limit, 1))
    params = {"id": row.id, "lo": lo, "hi": hi}
    changed = conn.execute(sql.unwrite(conn.dialect.name), params).rowcount
    if hi >= row.n:
        conn.execute(sql.DELETE_RECORD, {"id": row.id})
    else:
        conn.execute(sql.SET_UNDONE, {"id": row.id, "undone": hi})
    return int(row.id), hi - lo, int(changed)


def forget_all(conn: Connection) -> None:
    """Empty the record (after ``clear --all``: nothing it names is left to undo)."""
    if exists(conn):
        conn.execute(sql.DELETE_RECORDS)


# A marker row: values were written before this record existed (see module doc).
BEFORE_RECORD = "before-record"


def mark_incomplete(conn: Connection) -> None:
    marker = sql.PG_RECORD_MARKER if conn.dialect.name == "postgresql" else sql.SQLITE_RECORD_MARKER
    conn.execute(marker, {"job": BEFORE_RECORD})


def is_incomplete(conn: Connection) -> bool:
    """Whether values were written before the record existed (so it cannot undo them)."""
    return conn.execute(sql.RECORD_HAS_JOB, {"job": BEFORE_RECORD}).first() is not None
