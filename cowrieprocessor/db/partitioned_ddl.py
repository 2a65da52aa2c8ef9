"""The revisions' DDL on a partitioned ``session_summaries`` (PostgreSQL 13+).

PostgreSQL refuses three things the revisions do on a plain table
(docs/scale-out.md has the locks each step takes, measured on PostgreSQL 15):

* ``ADD FOREIGN KEY ... NOT VALID`` on a partitioned table (before PostgreSQL 18).
  0002 adds the key ``NOT VALID`` to each leaf instead (a leaf is a plain table);
  0004 validates each leaf (SHARE UPDATE EXCLUSIVE: writes go on), then adds the key
  to the parent, which *attaches* the leaves' validated keys without scanning them
  again (SHARE ROW EXCLUSIVE on the parent and its partitions, for milliseconds).
* ``CREATE INDEX CONCURRENTLY`` on a partitioned table. 0004 creates the index
  ``ON ONLY`` each partitioned table of the tree (no build; INVALID until every
  partition has its index), builds each leaf's index ``CONCURRENTLY``, and attaches
  each to its parent's; the parent's index turns valid with the last attach.
* ``DROP INDEX CONCURRENTLY`` of a partitioned index: the downgrade drops it with a
  plain ``DROP INDEX``, which takes ACCESS EXCLUSIVE on the parent and every
  partition for as long as the catalog change lasts (no data is read), under a short
  ``lock_timeout``, retried.

Every step can be rerun: an interrupted 0004 leaves an INVALID parent index and some
leaf indexes, and the next run builds only what is missing and attaches the rest.

Every name in these statements is quoted by the dialect (:class:`ddl.Statement`): a
partition's name and a constraint's name come from the catalog, and a role that may
rename a partition must not get a statement of its own run by the migration's role.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from alembic import op
from sqlalchemy import Connection

from cowrieprocessor.db import partitions
from cowrieprocessor.db.ddl import (
    Name,
    Statement,
    no_lock_timeout,
    run_pg_ddl,
    run_pg_ddl_autocommit,
    show_name,
    validate_constraint,
)

log = logging.getLogger("cowrieprocessor.migrations.partitions")

# Today's foreign key (its column, the table and column it references), for callers that
# are not revisions (the benchmarks). A revision passes its own (``table=``,
# ``references=``): an edit here must not change what an old revision does.
FK_TARGET = ("source_ip", "ip_inventory", "ip_address")
# adding the key ``name`` to a table; each name quoted by the dialect (:class:`Statement`)
ADD_KEY = "ALTER TABLE {} ADD CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {} ({})"

# The foreign keys source_ip -> ip_inventory of every leaf below :table.
_LEAF_FKS = sa.text(
    """SELECT t.relid::regclass::text AS leaf, n.nspname AS schema, r.relname,
              c.conname, c.convalidated, c.conparentid <> 0 AS inherited
       FROM pg_partition_tree(to_regclass(quote_ident(:table))) AS t
       JOIN pg_class r ON r.oid = t.relid
       JOIN pg_namespace n ON n.oid = r.relnamespace
       JOIN pg_constraint c ON c.conrelid = t.relid
       WHERE t.isleaf AND c.contype = 'f'
         AND c.confrelid = to_regclass('ip_inventory')
         AND c.conkey = ARRAY(SELECT a.attnum FROM pg_attribute a
                              WHERE a.attrelid = c.conrelid AND a.attname = 'source_ip')::int2[]
       ORDER BY t.relid::regclass::text COLLATE "C", c.conname"""
)
# An index by (schema, name), as the catalog has them: no name is parsed.
_INDEX_STATE = sa.text(
    """SELECT i.indisvalid, EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = i.indexrelid)
       FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
       JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE n.nspname = :schema AND c.relname = :name"""
)


@dataclass(frozen=True)
class LeafKey:
    leaf: str  # regclass text (quoted by PostgreSQL): to show
    name: str
    valid: bool
    inherited: bool  # attached to the parent's key
    table: tuple[str, str]  # (schema, leaf) as in the catalog: for statements


def leaf_keys(conn: Connection, table: str = partitions.SESSIONS_TABLE) -> list[LeafKey]:
    """The foreign keys ``source_ip -> ip_inventory`` of every leaf of ``table``, by leaf
    (in name order) then name."""
    return [
        LeafKey(
            str(r.leaf),
            str(r.conname),
            bool(r.convalidated),
            bool(r.inherited),
            (str(r.schema), str(r.relname)),
        )
        for r in conn.execute(_LEAF_FKS, {"table": table}).all()
    ]


# --- 0002 ------------------------------------------------------------------------------


def add_leaf_keys(
    conn: Connection, name: str, *, table: str, references: tuple[str, str, str]
) -> list[str]:
    """0002: the foreign key ``name`` (``references``: its column, the table and column it
    references) ``NOT VALID`` on each leaf of ``table`` that has none; returns the
    leaves."""
    leaves = [m for m in partitions.tree(conn, table) if m.leaf]
    have = {k.table for k in leaf_keys(conn, table)}
    added = []
    for leaf in sorted(leaves, key=lambda m: m.name):
        if leaf.table not in have:
            run_pg_ddl(Statement(ADD_KEY + " NOT VALID", leaf.table, name, *references))
            added.append(leaf.name)
    return added


def drop_leaf_keys(conn: Connection, name: str, *, table: str) -> None:
    """0002's downgrade: the keys named ``name`` of the leaves of ``table`` that no parent
    key took over (those go with the parent's)."""
    for key in leaf_keys(conn, table):
        if key.name == name and not key.inherited:
            run_pg_ddl(
                Statement("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}", key.table, key.name)
            )


# --- 0004: the foreign key ---------------------------------------------------------------


def validate_leaf_keys(
    conn: Connection,
    name: str,
    violations: str,
    examples: int,
    *,
    table: str,
    references: tuple[str, str, str],
) -> bool:
    """0004: validate each leaf's NOT VALID key, then add the parent's, ``name`` with
    ``references`` (as :func:`add_leaf_keys`) on ``table`` (it attaches them).

    A leaf whose rows violate the key keeps it NOT VALID (its validation fails, and only
    then are the rows counted), with a warning naming a few session ids, and the parent
    gets no key: a deploy must not fail on old data.
    ``violations`` is the predicate of a violating row (fixed SQL, alias ``s``). Returns
    True when the parent has its key.
    """
    clean = True
    for key in leaf_keys(conn, table):
        if key.valid:
            continue
        schema, leaf = key.table
        validate = Statement("ALTER TABLE {} VALIDATE CONSTRAINT {}", key.table, key.name)
        if validate_constraint(validate):
            continue
        clean = False
        rows = sa.table(leaf, sa.column("session_id"), schema=schema).alias("s")
        bad_rows = sa.select(rows.c.session_id).where(sa.text(violations))
        bad = conn.execute(sa.select(sa.func.count()).select_from(bad_rows.subquery())).scalar_one()
        sample = conn.execute(bad_rows.order_by(rows.c.session_id).limit(examples)).scalars()
        log.warning(
            "constraint %s of partition %s left NOT VALID: %d rows violate it (e.g. "
            "session_id %s); fix them, then run: %s",
            show_name(conn.dialect, key.name),
            key.leaf,
            bad,
            ", ".join(map(repr, sample)),
            validate.sql(conn.dialect),
        )
    if not clean:
        log.warning("so %s gets no foreign key on source_ip until they are fixed", table)
        return False
    run_pg_ddl_autocommit(Statement(ADD_KEY, table, name, *references))
    log.info("constraint %s validated on every partition and added to %s", name, table)
    return True


# --- 0004: the indexes -------------------------------------------------------------------


def build_index(conn: Connection, name: str, columns: Sequence[str], *, table: str) -> None:
    """0004: index ``columns`` of ``table`` as ``name`` on every partition without
    blocking writes (module doc)."""
    cols = ", ".join("{}" for _ in columns)
    members = partitions.tree(conn, table)
    run_pg_ddl_autocommit(
        Statement(f"CREATE INDEX IF NOT EXISTS {{}} ON ONLY {{}} ({cols})", name, table, *columns)
    )
    index_of: dict[tuple[str, str] | str, Name] = {table: name}  # each table -> its index
    owned: dict[tuple[str, str], tuple[str, str]] = {}  # each partition -> its index
    for m in members:  # parents before their children
        plain = partitions.child_name(name, m.name)
        own = index_of[m.table] = owned[m.table] = m.qualified(plain)
        if not m.leaf:
            run_pg_ddl_autocommit(
                Statement(
                    f"CREATE INDEX IF NOT EXISTS {{}} ON ONLY {{}} ({cols})",
                    plain,
                    m.table,
                    *columns,
                )
            )
            continue
        # always our own index, never a user's equivalent one: the downgrade drops
        # the parent's index, and with it every index attached to it
        if _index_state(conn, own)[0] is False:
            log.warning(
                "index %s is INVALID (an earlier build failed): rebuilding",
                show_name(conn.dialect, own),
            )
            with no_lock_timeout():
                op.execute(Statement("DROP INDEX CONCURRENTLY IF EXISTS {}", own))
        with no_lock_timeout():
            op.execute(
                Statement(
                    f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {{}} ON {{}} ({cols})",
                    plain,
                    m.table,
                    *columns,
                )
            )
    for m in sorted(members, key=lambda m: -m.level):  # children before their parents
        own = owned[m.table]
        if not _index_state(conn, own)[1]:
            parent = index_of[table if m.level == 1 else m.parent_table]
            run_pg_ddl_autocommit(Statement("ALTER INDEX {} ATTACH PARTITION {}", parent, own))
    log.info("index %s built on %d partition(s) and attached", name, len(members))


def _index_state(conn: Connection, index: tuple[str, str]) -> tuple[bool | None, bool]:
    """(valid, attached to a parent index) of ``index`` (schema, name); (None, False)
    when missing."""
    schema, name = index
    row = conn.execute(_INDEX_STATE, {"schema": schema, "name": name}).first()
    return (None, False) if row is None else (bool(row[0]), bool(row[1]))


def drop_index(conn: Connection, name: str, *, table: str) -> None:
    """0004's downgrade: the parent's index ``name`` on ``table`` (its attached children
    go with it), then any leaf index of ours that an interrupted build left unattached."""
    run_pg_ddl_autocommit(Statement("DROP INDEX IF EXISTS {}", name))
    for m in partitions.tree(conn, table):
        own = m.qualified(partitions.child_name(name, m.name))
        if _index_state(conn, own)[0] is not None:
            if m.leaf:
                with no_lock_timeout():
                    op.execute(Statement("DROP INDEX CONCURRENTLY IF EXISTS {}", own))
            else:
                run_pg_ddl_autocommit(Statement("DROP INDEX IF EXISTS {}", own))
