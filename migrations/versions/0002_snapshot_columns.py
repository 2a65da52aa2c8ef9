"""Add the five snapshot columns to session_summaries.

Revision ID: 0002_snapshot_columns
Revises: 0001_baseline
Create Date: 2026-11-27

``source_ip`` (FK to ``ip_inventory``), ``snapshot_asn``, ``snapshot_country`` (two
upper-case letters or NULL), ``snapshot_ip_type``, ``enrichment_at``: all nullable.

PostgreSQL: adding a nullable column without a default only touches the catalog, so
the ACCESS EXCLUSIVE lock lasts an instant. The constraints are added ``NOT VALID``
(no scan of millions of rows under the lock; revision 0004 validates them with a
weaker lock after the backfill). Everything is one ``ALTER TABLE`` under a short
``lock_timeout``, retried in a savepoint, so a deploy never queues the loader behind it.

SQLite: ``ALTER TABLE ... ADD COLUMN`` accepts an inline ``REFERENCES`` and ``CHECK``
clause, so no table rebuild is needed (batch mode is only used for the downgrade,
because SQLite cannot drop a column that a constraint mentions).

Adoption: a database built by cowrieprocessor's schema code already has the five
columns, a country CHECK and the ``source_ip`` FK, under its own names. Online, what
exists is recognised by definition (:mod:`cowrieprocessor.db.adoption`), checked for
usable types, reused and recorded in the ledger as adopted; only what is missing is
added, and recorded as created. The downgrade drops only what the ledger says this
revision created. A legacy ``snapshot_ip_types text[]`` column (left by upstream's
code before its own fix script) is left alone beside the new ``snapshot_ip_type``.
On SQLite a constraint cannot be added to a column that already exists without
rebuilding the table; that case is logged as a warning and the constraint is left out.

Names: every identifier in a statement is quoted by the dialect; the downgrade drops
only names this revision creates, whatever else the ledger lists (:mod:`ledger`).

A partitioned ``session_summaries``: PostgreSQL refuses a ``NOT VALID`` foreign key on
a partitioned table, so each leaf gets it ``NOT VALID`` and 0004 puts it on the table
(:mod:`cowrieprocessor.db.partitioned_ddl`). Offline (``--sql``) renders the plain path.
"""

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from cowrieprocessor.backfill import deferred_indexes
from cowrieprocessor.backfill.alembic_ops import batch_engine, migration_knobs
from cowrieprocessor.db import adoption, ledger, partitioned_ddl, partitions
from cowrieprocessor.db.ddl import Statement, run_pg_ddl
from cowrieprocessor.db.ledger import ADOPTED, CREATED

revision: str = "0002_snapshot_columns"
down_revision: str | Sequence[str] | None = "0001_baseline"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("cowrieprocessor.migrations.0002")

TABLE = "session_summaries"
# Our names for the constraints, when the database has no equivalent (stated here, never
# read from the library: a later edit there must not change what this revision does).
FK_NAME = "fk_session_summaries_source_ip_ip_inventory"
FK_REFERENCES = ("source_ip", "ip_inventory", "ip_address")  # column -> table (column)
CK_NAME = "ck_session_summaries_snapshot_country_iso2"
NAMES = adoption.OurNames(fk=FK_NAME, check=CK_NAME)  # no index: 0004 plans its own
COLUMNS = {
    "source_ip": "VARCHAR(45)",
    "snapshot_asn": "INTEGER",
    "snapshot_country": "VARCHAR(2)",
    "snapshot_ip_type": "TEXT",
    "enrichment_at": "TIMESTAMP WITH TIME ZONE",
}
SQLITE_TYPES = {**COLUMNS, "enrichment_at": "DATETIME"}
# the constraints' SQL, with {} where each of their names goes (quoted by the dialect)
PG_CK = ("CONSTRAINT {} CHECK ({} ~ '^[A-Z]{2}$')", (CK_NAME, "snapshot_country"))
# SQLite: column -> (its constraint, the constraint's SQL, its names)
SQLITE_INLINE = {
    "source_ip": (FK_NAME, "CONSTRAINT {} REFERENCES {} ({})", (FK_NAME, *FK_REFERENCES[1:])),
    "snapshot_country": (
        CK_NAME,
        "CONSTRAINT {} CHECK ({} GLOB '[A-Z][A-Z]')",
        (CK_NAME, "snapshot_country"),
    ),
}


def upgrade() -> None:
    """Add the snapshot columns and their constraints that are missing, without a long lock."""
    if op.get_context().as_sql:  # offline: no catalog to read, render the fresh path
        add = _add_pg if op.get_context().dialect.name == "postgresql" else _add_sqlite
        add(list(COLUMNS), fk=None, ck=None)
        return
    bind = op.get_bind()
    found = adoption.assess(bind, NAMES)
    adoption.require_adoptable(found)
    missing = found.missing_snapshot_columns
    fk = adoption.find_source_ip_fk(bind)
    ck = adoption.find_country_check(bind)
    if bind.dialect.name == "postgresql":
        _add_pg(missing, fk=fk, ck=ck, partitioned=partitions.is_partitioned(bind))
    else:
        _add_sqlite(missing, fk=fk, ck=ck)
    for name in COLUMNS:
        ledger.record(bind, revision, "column", name, CREATED if name in missing else ADOPTED)
    for found_one, ours in ((fk, FK_NAME), (ck, CK_NAME)):
        if found_one is not None:
            ledger.record(bind, revision, "constraint", found_one.name, ADOPTED)
        elif bind.dialect.name == "postgresql" or ours in _inline_added(missing):
            ledger.record(bind, revision, "constraint", ours, CREATED)
    adopted = [n for n in COLUMNS if n not in missing]
    if adopted or fk or ck:
        log.info(
            "adopting column(s) %s; reusing %s; created %s",
            ", ".join(adopted) or "none",
            ", ".join(f"{k} {f.name}" for k, f in (("FK", fk), ("CHECK", ck)) if f) or "none",
            ", ".join(missing) or "no column",
        )
    for legacy in found.legacy_columns:
        log.warning(
            "column %s.%s (from before cowrieprocessor's own fix) is left as it is; the "
            "snapshot type is snapshot_ip_type. Drop it yourself once nothing reads it.",
            TABLE,
            legacy,
        )


def _add_pg(
    missing: list[str],
    *,
    fk: adoption.Found | None,
    ck: adoption.Found | None,
    partitioned: bool = False,
) -> None:
    actions = [f"ADD COLUMN IF NOT EXISTS {{}} {COLUMNS[name]}" for name in missing]
    names = [TABLE, *missing]  # each {} in order, quoted by the dialect
    if fk is None and not partitioned:
        actions.append("ADD CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {} ({}) NOT VALID")
        names += [FK_NAME, *FK_REFERENCES]
    if ck is None:
        actions.append(f"ADD {PG_CK[0]} NOT VALID")
        names += PG_CK[1]
    if actions:
        run_pg_ddl(Statement("ALTER TABLE {} " + ", ".join(actions), *names))
    if fk is None and partitioned:
        # PostgreSQL refuses a NOT VALID foreign key on a partitioned table: each leaf
        # gets it instead; 0004 validates them and adds it to the table (they attach)
        added = partitioned_ddl.add_leaf_keys(
            op.get_bind(), FK_NAME, table=TABLE, references=FK_REFERENCES
        )
        log.info(
            "%s is partitioned: foreign key %s added NOT VALID to %d partition(s)",
            TABLE,
            FK_NAME,
            len(added),
        )


def _inline_added(missing: list[str]) -> list[str]:
    """SQLite: the constraints that come inline with a column being added."""
    return [SQLITE_INLINE[name][0] for name in missing if name in SQLITE_INLINE]


def _add_sqlite(
    missing: list[str], *, fk: adoption.Found | None, ck: adoption.Found | None
) -> None:
    present = {FK_NAME: fk, CK_NAME: ck}
    for name in COLUMNS:
        constraint, inline, inline_names = SQLITE_INLINE.get(name, ("", "", ()))
        if name in missing:
            op.execute(
                Statement(
                    f"ALTER TABLE {{}} ADD COLUMN {{}} {SQLITE_TYPES[name]} {inline}".strip(),
                    TABLE,
                    name,
                    *inline_names,
                )
            )
        elif constraint and present[constraint] is None:
            log.warning(
                "SQLite: column %s.%s already exists without constraint %s; it is left "
                "without it (adding it would rebuild the table)",
                TABLE,
                name,
                constraint,
            )


def downgrade() -> None:
    """Drop what the upgrade created (columns, constraints); keep what it adopted."""
    bind = None if op.get_context().as_sql else op.get_bind()
    if bind is not None and bind.dialect.name == "postgresql":
        restore_deferred_indexes()
    # adopted before the ledger existed: the columns were there, constraints under our
    # names can only be ours
    columns = ledger.created(
        bind, revision, "column", before_ledger=list(COLUMNS), adopted_before_ledger=()
    )
    constraints = ledger.created(
        bind,
        revision,
        "constraint",
        before_ledger=[CK_NAME, FK_NAME],
        adopted_before_ledger=[CK_NAME, FK_NAME],
    )
    if op.get_context().dialect.name == "postgresql":
        if bind is not None and FK_NAME in constraints and partitions.is_partitioned(bind):
            partitioned_ddl.drop_leaf_keys(bind, FK_NAME, table=TABLE)
        # names read back from the ledger (ours only: ledger.created), quoted all the same
        drops = ["DROP CONSTRAINT IF EXISTS {}"] * len(constraints)
        drops += ["DROP COLUMN IF EXISTS {}"] * len(columns)
        if drops:
            run_pg_ddl(
                Statement("ALTER TABLE {} " + ", ".join(drops), TABLE, *constraints, *columns)
            )
    elif columns or CK_NAME in constraints:
        _drop_sqlite(columns, drop_check=CK_NAME in constraints)
    ledger.finish_downgrade(bind, revision)


def restore_deferred_indexes() -> None:
    """An upgrade of 0003 cut short with ``defer_indexes=on`` left indexes dropped (the
    ledger lists them, :mod:`cowrieprocessor.backfill.deferred_indexes`): they are built
    again first, so that the way down leaves the table's indexes as the way up found them."""
    with batch_engine(migration_knobs()) as engine:
        deferred_indexes.restore(engine)


def _drop_sqlite(columns: list[str], *, drop_check: bool) -> None:
    """SQLite cannot drop a column that a constraint mentions: rebuild the table."""
    checks = {c["name"] for c in sa.inspect(op.get_bind()).get_check_constraints(TABLE)}
    if not columns and not (drop_check and CK_NAME in checks):
        return
    with op.batch_alter_table(TABLE, recreate="always") as batch:
        if drop_check and CK_NAME in checks:
            batch.drop_constraint(op.f(CK_NAME), type_="check")
        for name in columns:
            batch.drop_column(name)
