"""Turn a database's ``session_summaries`` and ``raw_events`` into partitioned tables.

What an operator does before (or instead of) moving to Citus: the same columns,
defaults, CHECKs, indexes and rows, in a table partitioned by hash of ``session_id``
(8 partitions by default) or by month of ``first_event_at`` (a year of monthly
partitions from :data:`RANGE_START`, and a DEFAULT one for the rest). ``raw_events``
is partitioned by hash of ``session_id`` in both cases, as it would be co-located with
the sessions on Citus.

A unique constraint of a partitioned table must contain the partition key, so the
primary key of a range-partitioned ``session_summaries`` is ``(session_id,
first_event_at)``, and the partitioned ``raw_events`` has no primary key (its ``id``
keeps its sequence and an index). Foreign keys *from* the converted tables are
carried over; none points *to* them in our schema.

Used by the tests and the benchmarks, on a database at 0001 (partitioned before the
deploy) or later. PostgreSQL only; every statement is fixed text with names, each quoted
by the dialect (:class:`cowrieprocessor.db.ddl.Statement`) wherever it comes from (these
constants, the catalog), or SQL that PostgreSQL wrote (``pg_get_indexdef``), no value
from a row.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy import Connection

from cowrieprocessor.db.ddl import Statement

HASH, RANGE = "hash", "range"
KINDS = (HASH, RANGE)
RANGE_START = datetime(2025, 1, 1, tzinfo=UTC)
RANGE_MONTHS = 12

_INDEXES = sa.text(
    """SELECT i.relname, pg_get_indexdef(i.oid) AS definition
       FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
       WHERE x.indrelid = to_regclass(quote_ident(:table))
         AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.oid)
       ORDER BY i.relname"""
)
_FOREIGN_KEYS = sa.text(
    """SELECT conname, pg_get_constraintdef(oid) AS definition FROM pg_constraint
       WHERE conrelid = to_regclass(quote_ident(:table)) AND contype = 'f' ORDER BY conname"""
)
_OWNED_SEQUENCES = sa.text(
    """SELECT n.nspname AS schema, s.relname AS sequence, a.attname AS column_name
       FROM pg_depend d
       JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
       JOIN pg_namespace n ON n.oid = s.relnamespace
       JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
       WHERE d.refobjid = to_regclass(quote_ident(:table)) AND d.deptype = 'a'"""
)


def partition_tables(conn: Connection, kind: str, partitions: int = 8) -> None:
    """Convert ``session_summaries`` (by ``kind``: hash or range) and ``raw_events``
    (hash) in place, rows included, inside the caller's transaction."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if kind == HASH:
        _convert(conn, "session_summaries", "HASH (session_id)", ["session_id"])
        _hash_partitions(conn, "session_summaries", partitions)
    else:
        _convert(
            conn, "session_summaries", "RANGE (first_event_at)", ["session_id", "first_event_at"]
        )
        _month_partitions(conn, "session_summaries")
    _convert(conn, "raw_events", "HASH (session_id)", None)
    conn.execute(sa.text("CREATE INDEX ix_raw_events_id ON raw_events (id)"))  # was the key
    _hash_partitions(conn, "raw_events", partitions)


def _convert(conn: Connection, table: str, by: str, primary_key: list[str] | None) -> None:
    old = f"{table}_unpartitioned"
    indexes = conn.execute(_INDEXES, {"table": table}).all()
    keys = conn.execute(_FOREIGN_KEYS, {"table": table}).all()
    sequences = conn.execute(_OWNED_SEQUENCES, {"table": table}).all()
    pk = conn.execute(
        sa.text(
            "SELECT conname FROM pg_constraint WHERE conrelid = to_regclass(quote_ident(:table)) "
            "AND contype = 'p'"
        ),
        {"table": table},
    ).scalar()
    conn.execute(Statement("ALTER TABLE {} RENAME TO {}", table, old))
    for index in indexes:
        conn.execute(
            Statement("ALTER INDEX {} RENAME TO {}", index.relname, f"{index.relname}_old")
        )
    if pk is not None:
        conn.execute(Statement("ALTER TABLE {} RENAME CONSTRAINT {} TO {}", old, pk, f"{pk}_old"))
    conn.execute(
        Statement(
            "CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
            f"INCLUDING STORAGE INCLUDING COMMENTS) PARTITION BY {by}",
            table,
            old,
        )
    )
    for seq in sequences:
        conn.execute(
            Statement(
                "ALTER SEQUENCE {} OWNED BY {}.{}",
                (seq.schema, seq.sequence),
                table,
                seq.column_name,
            )
        )
    if pk is not None and primary_key:
        columns = ", ".join("{}" for _ in primary_key)
        conn.execute(
            Statement(
                f"ALTER TABLE {{}} ADD CONSTRAINT {{}} PRIMARY KEY ({columns})",
                table,
                pk,
                *primary_key,
            )
        )
    for index in indexes:  # read before the renames: the original name, on the new table
        _run_as_written(conn, str(index.definition))
    for key in keys:  # the definition as PostgreSQL writes it
        conn.execute(
            Statement(
                f"ALTER TABLE {{}} ADD CONSTRAINT {{}} {_braces(key.definition)}",
                table,
                key.conname,
            )
        )


def _braces(definition: str) -> str:
    """SQL that PostgreSQL wrote, as the fixed part of a :class:`Statement` (no ``{}``)."""
    if "{}" in definition:
        raise ValueError(f"cannot carry over {definition!r}")
    return str(definition)


def _run_as_written(conn: Connection, statement: str) -> None:
    """A statement PostgreSQL wrote (``pg_get_indexdef``), sent to the server as it is:
    no bind parameters (a ``:`` in a name), no driver formatting (a ``%``)."""
    conn.exec_driver_sql(statement, execution_options={"no_parameters": True})


def _hash_partitions(conn: Connection, table: str, partitions: int) -> None:
    for n in range(partitions):
        conn.execute(
            Statement(
                "CREATE TABLE {} PARTITION OF {} "
                f"FOR VALUES WITH (MODULUS {int(partitions)}, REMAINDER {int(n)})",
                f"{table}_p{n}",
                table,
            )
        )
    _copy_rows(conn, table)


def _month_partitions(conn: Connection, table: str) -> None:
    start = RANGE_START
    for n in range(RANGE_MONTHS):
        year, month = divmod(start.month - 1 + n, 12)
        lo = start.replace(year=start.year + year, month=month + 1)
        year, month = divmod(start.month + n, 12)
        hi = start.replace(year=start.year + year, month=month + 1)
        # the bounds: timestamps computed here from RANGE_START, never from a row
        conn.execute(
            Statement(
                "CREATE TABLE {} PARTITION OF {} "
                f"FOR VALUES FROM ('{lo.isoformat()}') TO ('{hi.isoformat()}')",
                f"{table}_{lo:%Y_%m}",
                table,
            )
        )
    conn.execute(Statement("CREATE TABLE {} PARTITION OF {} DEFAULT", f"{table}_default", table))
    _copy_rows(conn, table)


def _copy_rows(conn: Connection, table: str) -> None:
    old = f"{table}_unpartitioned"
    conn.execute(Statement("INSERT INTO {} SELECT * FROM {}", table, old))
    conn.execute(Statement("DROP TABLE {}", old))
