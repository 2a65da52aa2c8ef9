"""Partitioned tables and Citus, as the catalog shows them (PostgreSQL).

A partitioned ``session_summaries`` (declarative partitioning: hash on ``session_id``,
range on ``first_event_at``, or several levels) stores its rows in its *leaves*; the
parent holds none. The backfill walks the leaves one after the other, each with its own
key ranges and its own ``ctid`` join-back (a ``ctid`` is unique only inside one table),
and the revisions build indexes and constraints leaf by leaf where PostgreSQL refuses to
do it on the parent without a long lock (docs/scale-out.md).

Names: a leaf is named by ``regclass::text``, which PostgreSQL quotes (``quote_ident``)
and qualifies with its schema when needed: the name the operator sees, the one a saved
position holds, the one a digest is taken of. The leaves are ordered by that name in
byte order (``COLLATE "C"``, the same order as Python's ``sorted``), so a saved position
can be compared with the leaves of a later run even when partitions were added or
dropped meanwhile. A statement never splices that text: a :class:`Member` also carries
its schema and table name as the catalog has them (:attr:`Member.table`), for the
dialect to quote (:class:`cowrieprocessor.db.ddl.Statement`, ``sa.table(..., schema=)``).
A ``table`` argument is a plain table name in the search path, quoted by PostgreSQL
(``quote_ident``) before ``to_regclass`` parses it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import Connection

SESSIONS_TABLE = "session_summaries"
MAX_IDENTIFIER_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1: a longer name is cut silently

_IS_PARTITIONED = sa.text(
    "SELECT c.relkind = 'p' FROM pg_class c WHERE c.oid = to_regclass(quote_ident(:table))"
)
# Every table of the tree below :table (itself excluded), its parent and whether it is a
# leaf; parents before their children (by level), then by name.
_TREE = sa.text(
    """SELECT t.relid::regclass::text AS name, t.parentrelid::regclass::text AS parent,
              t.isleaf, t.level, n.nspname AS schema, c.relname,
              pn.nspname AS parent_schema, pc.relname AS parent_relname
       FROM pg_partition_tree(to_regclass(quote_ident(:table))) AS t
       JOIN pg_class c ON c.oid = t.relid
       JOIN pg_namespace n ON n.oid = c.relnamespace
       JOIN pg_class pc ON pc.oid = t.parentrelid
       JOIN pg_namespace pn ON pn.oid = pc.relnamespace
       WHERE t.level > 0
       ORDER BY t.level, t.relid::regclass::text COLLATE "C"
    """
)
_HAS_CITUS = sa.text("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')")


@dataclass(frozen=True)
class Member:
    """One table of a partition tree below the root."""

    name: str  # regclass text (quoted and schema-qualified by PostgreSQL): to show
    parent: str  # the parent's regclass text
    leaf: bool
    level: int
    table: tuple[str, str]  # (schema, table name) as in the catalog: for statements
    parent_table: tuple[str, str]

    def qualified(self, name: str) -> tuple[str, str]:
        """An object ``name`` in this table's schema: (schema, name), for a statement."""
        return (self.table[0], name)


def is_partitioned(conn: Connection, table: str = SESSIONS_TABLE) -> bool:
    """Whether ``table`` is a partitioned table (never on SQLite)."""
    if conn.dialect.name != "postgresql":
        return False
    return bool(conn.execute(_IS_PARTITIONED, {"table": table}).scalar())


def tree(conn: Connection, table: str = SESSIONS_TABLE) -> list[Member]:
    """The partitions of ``table`` at every level, parents first ([] if not partitioned:
    the tree of a plain table is the table itself, level 0)."""
    if conn.dialect.name != "postgresql":
        return []
    rows = conn.execute(_TREE, {"table": table}).all()
    return [
        Member(
            str(r.name),
            str(r.parent),
            bool(r.isleaf),
            int(r.level),
            (str(r.schema), str(r.relname)),
            (str(r.parent_schema), str(r.parent_relname)),
        )
        for r in rows
    ]


def leaves(conn: Connection, table: str = SESSIONS_TABLE) -> list[str] | None:
    """The leaves of a partitioned ``table`` in byte order of their names; None when the
    table is not partitioned (a partitioned table without partitions gives [])."""
    if not is_partitioned(conn, table):
        return None
    return sorted(m.name for m in tree(conn, table) if m.leaf)


def has_citus(conn: Connection) -> bool:
    """Whether the ``citus`` extension is installed in this database."""
    if conn.dialect.name != "postgresql":
        return False
    return bool(conn.execute(_HAS_CITUS).scalar())


def child_name(name: str, member: str) -> str:
    """The name of ``name``'s copy on partition ``member`` (an index, a constraint):
    ``name`` with a short digest of the partition's name (its regclass text), within
    PostgreSQL's 63 bytes, the same on every run. ``name`` is cut by bytes, on a
    character boundary (a name in ASCII: at 52 characters, as it always was)."""
    digest = hashlib.sha256(member.encode()).hexdigest()[:10]
    head = name.encode()[: MAX_IDENTIFIER_BYTES - len(digest) - 1].decode(errors="ignore")
    return f"{head}_{digest}"
