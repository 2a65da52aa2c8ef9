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
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from alembic import op
from sqlalchemy import Connection

from cowrieprocessor.db import partitions
from cowrieprocessor.db.ddl import run_pg_ddl, run_pg_ddl_autocommit

log = logging.getLogger("cowrieprocessor.migrations.partitions")

TABLE = partitions.TABLE
FK_TARGET = "FOREIGN KEY (source_ip) REFERENCES ip_inventory (ip_address)"

_FK_ON = sa.text(
    """SELECT c.conname, c.convalidated, c.conparentid <> 0 AS inherited
       FROM pg_constraint c
       WHERE c.conrelid = to_regclass(:table) AND c.contype = 'f'
         AND c.confrelid = to_regclass('ip_inventory')
         AND c.conkey = ARRAY(SELECT a.attnum FROM pg_attribute a
                              WHERE a.attrelid = c.conrelid AND a.attname = 'source_ip')::int2[]
       ORDER BY c.conname"""
)
_INDEX_STATE = sa.text(
    """SELECT i.indisvalid, EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = i.indexrelid)
       FROM pg_index i WHERE i.indexrelid = to_regclass(:index)"""
)


@dataclass(frozen=True)
class LeafKey:
    leaf: str
    name: str
    valid: bool
    inherited: bool  # attached to the parent's key


def leaf_keys(conn: Connection, leaves: list[str] | None = None) -> list[LeafKey]:
    """The foreign keys ``source_ip -> ip_inventory`` of every leaf of session_summaries
    (``leaves``: those leaves, when the caller has read them already)."""
    found = []
    for leaf in partitions.leaves(conn) or [] if leaves is None else leaves:
        for row in conn.execute(_FK_ON, {"table": leaf}).all():
            found.append(LeafKey(leaf, str(row.conname), bool(row.convalidated), row.inherited))
    return found


# --- 0002 ------------------------------------------------------------------------------


def add_leaf_keys(conn: Connection, name: str) -> list[str]:
    """0002: the foreign key ``NOT VALID`` on each leaf that has none; returns the leaves."""
    leaves = partitions.leaves(conn) or []
    have = {k.leaf for k in leaf_keys(conn, leaves)}
    added = []
    for leaf in leaves:
        if leaf not in have:
            run_pg_ddl(f"ALTER TABLE {leaf} ADD CONSTRAINT {name} {FK_TARGET} NOT VALID")
            added.append(leaf)
    return added


def drop_leaf_keys(conn: Connection, name: str) -> None:
    """0002's downgrade: the leaves' keys named ``name`` that no parent key took over
    (those go with the parent's)."""
    for key in leaf_keys(conn):
        if key.name == name and not key.inherited:
            run_pg_ddl(f'ALTER TABLE {key.leaf} DROP CONSTRAINT IF EXISTS "{key.name}"')


# --- 0004: the foreign key ---------------------------------------------------------------


def validate_leaf_keys(conn: Connection, name: str, violations: str, examples: int) -> bool:
    """0004: validate each leaf's NOT VALID key, then add the parent's (it attaches them).

    A leaf whose rows violate the key keeps it NOT VALID, with a warning naming a few
    session ids, and the parent gets no key: a deploy must not fail on old data.
    ``violations`` is the predicate of a violating row (fixed SQL, alias ``s``). Returns
    True when the parent has its key.
    """
    clean = True
    for key in leaf_keys(conn):
        if key.valid:
            continue
        where = f"FROM {key.leaf} s WHERE {violations}"
        bad = conn.execute(sa.text(f"SELECT count(*) {where}")).scalar_one()
        if bad:
            clean = False
            sample = conn.execute(
                sa.text(f"SELECT s.session_id {where} ORDER BY s.session_id LIMIT :n"),
                {"n": examples},
            ).scalars()
            log.warning(
                "constraint %s of partition %s left NOT VALID: %d rows violate it (e.g. "
                "session_id %s); fix them, then run: ALTER TABLE %s VALIDATE CONSTRAINT %s",
                key.name,
                key.leaf,
                bad,
                ", ".join(map(repr, sample)),
                key.leaf,
                key.name,
            )
            continue
        op.execute(f'ALTER TABLE {key.leaf} VALIDATE CONSTRAINT "{key.name}"')
    if not clean:
        log.warning("so session_summaries gets no foreign key on source_ip until they are fixed")
        return False
    run_pg_ddl_autocommit(f"ALTER TABLE {TABLE} ADD CONSTRAINT {name} {FK_TARGET}")
    log.info("constraint %s validated on every partition and added to %s", name, TABLE)
    return True


# --- 0004: the indexes -------------------------------------------------------------------


def build_index(conn: Connection, name: str, columns: Sequence[str]) -> None:
    """0004: index ``columns`` on every partition without blocking writes (module doc)."""
    cols = ", ".join(columns)
    members = partitions.tree(conn)
    run_pg_ddl_autocommit(f"CREATE INDEX IF NOT EXISTS {name} ON ONLY {TABLE} ({cols})")
    index_of = {TABLE: name}  # each table of the tree -> its index (qualified)
    for m in members:  # parents before their children
        plain = partitions.child_name(name, m.name)
        own = index_of[m.name] = m.qualified(plain)
        if not m.leaf:
            run_pg_ddl_autocommit(f"CREATE INDEX IF NOT EXISTS {plain} ON ONLY {m.name} ({cols})")
            continue
        # always our own index, never a user's equivalent one: the downgrade drops
        # the parent's index, and with it every index attached to it
        if _index_state(conn, own)[0] is False:
            log.warning("index %s is INVALID (an earlier build failed): rebuilding", own)
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {own}")
        op.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {plain} ON {m.name} ({cols})")
    for m in sorted(members, key=lambda m: -m.level):  # children before their parents
        if not _index_state(conn, index_of[m.name])[1]:
            run_pg_ddl_autocommit(
                f"ALTER INDEX {index_of[m.parent]} ATTACH PARTITION {index_of[m.name]}"
            )
    log.info("index %s built on %d partition(s) and attached", name, len(members))


def _index_state(conn: Connection, index: str) -> tuple[bool | None, bool]:
    """(valid, attached to a parent index) of ``index``; (None, False) when missing."""
    row = conn.execute(_INDEX_STATE, {"index": index}).first()
    return (None, False) if row is None else (bool(row[0]), bool(row[1]))


def drop_index(conn: Connection, name: str) -> None:
    """0004's downgrade: the parent's index (its attached children go with it), then any
    leaf index of ours that an interrupted build left unattached."""
    run_pg_ddl_autocommit(f"DROP INDEX IF EXISTS {name}")
    for m in partitions.tree(conn):
        own = m.qualified(partitions.child_name(name, m.name))
        if _index_state(conn, own)[0] is not None:
            op.execute(f"DROP INDEX {'CONCURRENTLY ' if m.leaf else ''}IF EXISTS {own}")
