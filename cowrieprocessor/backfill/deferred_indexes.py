"""Indexes on the snapshot columns, dropped for the walk and rebuilt after it (knob
``defer_indexes``, PostgreSQL).

Why: PostgreSQL updates a row in place (a HOT update: no new index entry, room found
on the same page) only when no indexed column changes. The backfill writes the five
snapshot columns, so every index on one of them turns each of its updates into a new
row version plus one new entry in *every* index of the table. The field's databases
have three to seven such indexes (``idx_session_source_ip`` and the like,
upstream-schema.md). Without them the walk's updates are HOT, and the indexes are built
once afterwards from the finished data (docs/performance.md, "Deferred indexes").

The cost: while they are gone, a query that would use them runs without them. So it is
an operator's choice, off by default, and the log names each index dropped and rebuilt.

What is deferred: each valid b-tree index of ``session_summaries`` with a snapshot
column among its key columns that can be rebuilt exactly from its name and its columns:
not unique, backing no constraint, no INCLUDE, predicate or expression, the default
operator class, collation and order, no storage options, the default tablespace. Any
other index on those columns stays (the walk maintains it) and is named in the log. A
partitioned table is refused: PostgreSQL cannot drop or build its indexes
``CONCURRENTLY``.

Crash safety: each index is recorded in the ledger (revision 0003, action
``deferred``, its key columns) and committed *before* ``DROP INDEX CONCURRENTLY``; it
is rebuilt with ``CREATE INDEX CONCURRENTLY`` (an INVALID leftover of a build cut short
is dropped first) and forgotten only once built. A kill at any moment therefore leaves
the index, or its ledger row, or both; and every job on the table (backfill, undo,
clear) and the downgrade of 0002 end by rebuilding what the ledger lists
(:func:`restore`), whatever their knobs.

The ledger is a table other roles may write: a row is rebuilt only if its columns are
columns of ``session_summaries``, one of them a snapshot column, and every name is
quoted by the dialect (:class:`~cowrieprocessor.db.ddl.Statement`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from cowrieprocessor.backfill import sql
from cowrieprocessor.backfill.knobs import KnobError
from cowrieprocessor.db import adoption, ledger, partitions
from cowrieprocessor.db.ddl import Statement, show_name

log = logging.getLogger("cowrieprocessor.backfill")

REVISION = "0003_backfill_session_snapshots"  # the ledger rows are the data revision's
DEFERRED = "deferred"
TABLE = "session_summaries"

# Every index of the table with a snapshot column among its key columns, and what would
# keep it from being rebuilt exactly from its name and key columns.
_INDEXES = sa.text(
    """SELECT c.relname AS name,
              ARRAY(SELECT a.attname FROM unnest(i.indkey[0:i.indnkeyatts - 1])
                    WITH ORDINALITY AS k(attnum, n)
                    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                    ORDER BY k.n) AS columns,
              CASE
                WHEN NOT i.indisvalid THEN 'INVALID'
                WHEN am.amname <> 'btree' THEN am.amname
                WHEN i.indisunique THEN 'unique'
                WHEN EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)
                  THEN 'backs a constraint'
                WHEN i.indexprs IS NOT NULL THEN 'an expression'
                WHEN i.indpred IS NOT NULL THEN 'partial'
                WHEN i.indnkeyatts <> i.indnatts THEN 'INCLUDE columns'
                WHEN c.reloptions IS NOT NULL THEN 'storage options'
                WHEN c.reltablespace <> 0 THEN 'its own tablespace'
                WHEN EXISTS (SELECT 1 FROM unnest(i.indoption) AS o(v) WHERE o.v <> 0)
                  THEN 'DESC or NULLS FIRST'
                WHEN EXISTS (
                    SELECT 1 FROM unnest(i.indclass, i.indcollation, i.indkey)
                                  AS x(opclass, coll, attnum)
                    JOIN pg_opclass o ON o.oid = x.opclass
                    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = x.attnum
                    WHERE NOT o.opcdefault OR x.coll <> a.attcollation)
                  THEN 'an operator class or collation of its own'
              END AS kept_because
       FROM pg_index i
       JOIN pg_class c ON c.oid = i.indexrelid
       JOIN pg_am am ON am.oid = c.relam
       WHERE i.indrelid = to_regclass(quote_ident(:table))
         AND EXISTS (SELECT 1 FROM unnest(i.indkey[0:i.indnkeyatts - 1]) AS k(attnum)
                     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                     WHERE a.attname = ANY (:snapshot))
       ORDER BY c.relname"""
)


@dataclass(frozen=True)
class Index:
    name: str
    columns: tuple[str, ...]

    def describe(self, dialect: sa.Dialect) -> str:
        return f"{show_name(dialect, self.name)} ({', '.join(self.columns)})"


def found(conn: Connection) -> tuple[list[Index], list[tuple[Index, str]]]:
    """The indexes on the snapshot columns: those that can be deferred, and the others
    with the reason each stays."""
    rows = conn.execute(_INDEXES, {"table": TABLE, "snapshot": sorted(sql.SNAPSHOT_COLUMNS)}).all()
    can = [Index(r.name, tuple(r.columns)) for r in rows if r.kept_because is None]
    kept = [(Index(r.name, tuple(r.columns)), str(r.kept_because)) for r in rows if r.kept_because]
    return can, kept


def pending(conn: Connection) -> list[Index]:
    """The indexes the ledger says are deferred, those it may rebuild (module docstring);
    a row naming anything else is left alone, with a warning."""
    if conn.dialect.name != "postgresql":
        return []
    rows = [e for e in ledger.entries(conn, REVISION) if e.action == DEFERRED and e.kind == "index"]
    if not rows:
        return []
    columns = {c["name"] for c in sa.inspect(conn).get_columns(TABLE)}
    out: list[Index] = []
    for entry in rows:
        cols = tuple(c.strip() for c in (entry.detail or "").split(","))
        if all(c in columns for c in cols) and sql.SNAPSHOT_COLUMNS.intersection(cols):
            out.append(Index(entry.name, cols))
        else:
            log.warning(
                "the ledger lists index %r as deferred on columns %r, which are not "
                "snapshot columns of %s: left alone (check who writes to %s)",
                entry.name,
                entry.detail,
                TABLE,
                ledger.LEDGER_TABLE,
            )
    return out


def check(knobs_defer: bool, conn: Connection) -> None:
    """Refuse ``defer_indexes=on`` where it cannot work, by name, before any write."""
    if not knobs_defer:
        return
    if conn.dialect.name != "postgresql":
        raise KnobError(
            "defer_indexes=on: SQLite has no concurrent index builds, and updates there "
            "touch only the indexes of the columns they change; run with defer_indexes=off"
        )
    if partitions.is_partitioned(conn):
        raise KnobError(
            "defer_indexes=on: session_summaries is partitioned, and PostgreSQL cannot "
            "drop or build a partitioned table's indexes CONCURRENTLY; run with "
            "defer_indexes=off"
        )


@contextmanager
def _ddl_connection(engine: Engine) -> Iterator[Connection]:
    """An autocommit connection for ``CONCURRENTLY`` DDL, with no lock or statement
    timeout (either would cut a build's wait for older transactions and leave an
    INVALID index: :func:`cowrieprocessor.db.ddl.no_lock_timeout`), reset after."""
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.execute(sa.text("SET lock_timeout = 0"))
        conn.execute(sa.text("SET statement_timeout = 0"))
        try:
            yield conn
        finally:
            conn.execute(sa.text("RESET lock_timeout"))
            conn.execute(sa.text("RESET statement_timeout"))


def defer(engine: Engine) -> list[Index]:
    """Record, then drop, each index that can be deferred; name the ones that stay."""
    with engine.connect() as conn:
        can, kept = found(conn)
        conn.rollback()
    for index, why in kept:
        log.warning(
            "defer_indexes: index %s stays (%s): the walk maintains it",
            index.describe(engine.dialect),
            why,
        )
    if not can:
        log.info("defer_indexes: no (more) index to drop on the snapshot columns")
        return []
    log.info(
        "defer_indexes: dropping %s until the walk is done; queries that use them run "
        "without them meanwhile",
        ", ".join(i.describe(engine.dialect) for i in can),
    )
    with _ddl_connection(engine) as conn:
        for index in can:
            with engine.begin() as record:  # committed first: a crash still knows it
                ledger.record(
                    record, REVISION, "index", index.name, DEFERRED, ", ".join(index.columns)
                )
            conn.execute(Statement("DROP INDEX CONCURRENTLY IF EXISTS {}", index.name))
    return can


def announce(earlier: list[Index], dialect: sa.Dialect) -> None:
    """Say which indexes an earlier run that did not finish left dropped (this run
    builds them again when it is done: :func:`restore`)."""
    if earlier:
        log.info(
            "defer_indexes: %s dropped by an earlier run that did not finish; built "
            "again when this one is done",
            ", ".join(i.describe(dialect) for i in earlier),
        )


def restore(engine: Engine, todo: list[Index] | None = None) -> list[Index]:
    """Build again each index the ledger lists as deferred (``todo``, when the caller
    has read them: :func:`pending`), then forget it."""
    if engine.dialect.name != "postgresql":
        return []
    if todo is None:
        with engine.connect() as conn:
            todo = pending(conn)
            conn.rollback()
    if not todo:
        return []
    with _ddl_connection(engine) as conn:
        for index in todo:
            started = time.monotonic()
            if adoption.index_is_invalid(conn, index.name, TABLE):  # a build cut short
                conn.execute(Statement("DROP INDEX CONCURRENTLY IF EXISTS {}", index.name))
            conn.execute(
                Statement(
                    "CREATE INDEX CONCURRENTLY IF NOT EXISTS {} ON {} ("
                    + ", ".join(["{}"] * len(index.columns))
                    + ")",
                    index.name,
                    TABLE,
                    *index.columns,
                )
            )
            with engine.begin() as record:
                ledger.forget_entry(record, REVISION, "index", index.name)
            log.info(
                "defer_indexes: rebuilt %s in %.1f s",
                index.describe(engine.dialect),
                time.monotonic() - started,
            )
    return todo
