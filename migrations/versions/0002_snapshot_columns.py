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

Adoption: a database that predates Alembic may already have some or all of the five
columns. Online, only what is missing is added. On SQLite a constraint cannot be
added to a column that already exists without rebuilding the table; that case is
logged as a warning and the constraint is left out.
"""

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from cowrieprocessor.db.ddl import run_pg_ddl

revision: str = "0002_snapshot_columns"
down_revision: str | Sequence[str] | None = "0001_baseline"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("cowrieprocessor.migrations.0002")

TABLE = "session_summaries"
FK_NAME = "fk_session_summaries_source_ip_ip_inventory"
CK_NAME = "ck_session_summaries_snapshot_country_iso2"
COLUMNS = {
    "source_ip": "VARCHAR(45)",
    "snapshot_asn": "INTEGER",
    "snapshot_country": "VARCHAR(2)",
    "snapshot_ip_type": "TEXT",
    "enrichment_at": "TIMESTAMP WITH TIME ZONE",
}
SQLITE_TYPES = {**COLUMNS, "enrichment_at": "DATETIME"}
PG_FK = f"CONSTRAINT {FK_NAME} FOREIGN KEY (source_ip) REFERENCES ip_inventory (ip_address)"
PG_CK = f"CONSTRAINT {CK_NAME} CHECK (snapshot_country ~ '^[A-Z]{{2}}$')"
SQLITE_INLINE = {
    "source_ip": f"CONSTRAINT {FK_NAME} REFERENCES ip_inventory (ip_address)",
    "snapshot_country": f"CONSTRAINT {CK_NAME} CHECK (snapshot_country GLOB '[A-Z][A-Z]')",
}


def _existing() -> tuple[set[str], set[str]]:
    """Columns and constraint names already on the table (empty in offline mode)."""
    if op.get_context().as_sql:
        return set(), set()
    inspector = sa.inspect(op.get_bind())
    columns = {c["name"] for c in inspector.get_columns(TABLE)}
    constraints = {fk["name"] for fk in inspector.get_foreign_keys(TABLE) if fk["name"]}
    constraints |= {ck["name"] for ck in inspector.get_check_constraints(TABLE) if ck["name"]}
    for fk in inspector.get_foreign_keys(TABLE):
        if fk["constrained_columns"] == ["source_ip"]:
            constraints.add(FK_NAME)  # SQLite may not report the name of an inline FK
    return columns, constraints


def upgrade() -> None:
    """Add the snapshot columns and their constraints, without a long lock."""
    columns, constraints = _existing()
    missing = [name for name in COLUMNS if name not in columns]
    if op.get_context().dialect.name == "postgresql":
        actions = [f"ADD COLUMN IF NOT EXISTS {name} {COLUMNS[name]}" for name in missing]
        if FK_NAME not in constraints:
            actions.append(f"ADD {PG_FK} NOT VALID")
        if CK_NAME not in constraints:
            actions.append(f"ADD {PG_CK} NOT VALID")
        if actions:
            run_pg_ddl(f"ALTER TABLE {TABLE} " + ", ".join(actions))
        return

    for name in COLUMNS:
        inline = SQLITE_INLINE.get(name, "")
        if name in missing:
            op.execute(
                f"ALTER TABLE {TABLE} ADD COLUMN {name} {SQLITE_TYPES[name]} {inline}".strip()
            )
        elif inline and inline.split()[1] not in constraints:
            log.warning(
                "SQLite: column %s.%s already exists without constraint %s; it is left "
                "without it (adding it would rebuild the table)",
                TABLE,
                name,
                inline.split()[1],
            )


def downgrade() -> None:
    """Drop the snapshot columns and their constraints."""
    if op.get_context().dialect.name == "postgresql":
        drops = [f"DROP CONSTRAINT IF EXISTS {CK_NAME}", f"DROP CONSTRAINT IF EXISTS {FK_NAME}"]
        drops += [f"DROP COLUMN IF EXISTS {name}" for name in COLUMNS]
        run_pg_ddl(f"ALTER TABLE {TABLE} " + ", ".join(drops))
        return
    # SQLite cannot drop a column that a constraint mentions: rebuild the table.
    with op.batch_alter_table(TABLE, recreate="always") as batch:
        if CK_NAME in _existing()[1]:
            batch.drop_constraint(op.f(CK_NAME), type_="check")
        for name in COLUMNS:
            batch.drop_column(name)
