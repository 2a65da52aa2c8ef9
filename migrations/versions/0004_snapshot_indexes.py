"""Index the snapshot columns (after the data is in) and validate the constraints.

Revision ID: 0004_snapshot_indexes
Revises: 0003_backfill_session_snapshots
Create Date: 2026-11-27

Why after the backfill: every index on a column that the backfill writes is updated
row by row during it. Measured on PostgreSQL 15 with 1.68M sessions, the batched
backfill took 78 s with these four indexes present and 31 s without them, plus 3 s
to build them afterwards.

Indexes: one each on ``source_ip``, ``snapshot_asn``, ``snapshot_country``,
``snapshot_ip_type``, and ``(snapshot_country, snapshot_asn, session_id)``, which
covers the analysts' query ``SELECT session_id, snapshot_country, snapshot_asn ...
WHERE snapshot_country = 'CN' AND snapshot_asn = 4134`` with an index-only scan
(``session_id`` is a key column rather than ``INCLUDE``d so that SQLite, whose
secondary indexes carry the rowid and not the primary key, is covered too).

PostgreSQL: ``CREATE INDEX CONCURRENTLY IF NOT EXISTS`` outside a transaction, so
the loader keeps writing while they build. A concurrent build that failed earlier
leaves an INVALID index that ``IF NOT EXISTS`` would silently keep: such an index is
dropped and rebuilt. Then ``VACUUM (ANALYZE)`` sets the visibility map, without
which an index-only scan still visits the heap. Then the ``NOT VALID`` constraints of
0002 are validated (SHARE UPDATE EXCLUSIVE: writes go on). Rows that violate one (an
adopted database's old data) leave that constraint unvalidated with a warning naming
the count and a few session ids: a deploy must not fail on old data it did not write.

One repair comes first: if a downgrade of 0003 was interrupted half way, the database
is stamped at 0003 with some snapshots already cleared; they are refilled here (by the
backfill engine) so that head always means "backfilled".
"""

import logging
import os
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

from cowrieprocessor.backfill import BackfillKnobs, engine_for_bind
from cowrieprocessor.backfill.engine import refill_after_interrupted_clear

revision: str = "0004_snapshot_indexes"
down_revision: str | Sequence[str] | None = "0003_backfill_session_snapshots"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("cowrieprocessor.migrations.0004")

TABLE = "session_summaries"
INDEXES: dict[str, tuple[str, ...]] = {
    "ix_session_summaries_source_ip": ("source_ip",),
    "ix_session_summaries_snapshot_asn": ("snapshot_asn",),
    "ix_session_summaries_snapshot_country": ("snapshot_country",),
    "ix_session_summaries_snapshot_ip_type": ("snapshot_ip_type",),
    "ix_session_summaries_snapshot_country_snapshot_asn_session_id": (
        "snapshot_country",
        "snapshot_asn",
        "session_id",
    ),
}
# Each constraint of 0002 with the rows that would violate it.
CONSTRAINTS: dict[str, str] = {
    "fk_session_summaries_source_ip_ip_inventory": (
        "s.source_ip IS NOT NULL AND NOT EXISTS "
        "(SELECT 1 FROM ip_inventory i WHERE i.ip_address = s.source_ip)"
    ),
    "ck_session_summaries_snapshot_country_iso2": (
        "s.snapshot_country IS NOT NULL AND s.snapshot_country !~ '^[A-Z]{2}$'"
    ),
}
EXAMPLES = 5


def upgrade() -> None:
    """Build the snapshot indexes, refresh the visibility map, validate constraints."""
    migration = op.get_context()
    if not migration.as_sql:
        _refill_if_a_downgrade_was_interrupted()
    if migration.dialect.name != "postgresql":
        for name, columns in INDEXES.items():
            op.create_index(name, TABLE, list(columns), if_not_exists=True)
        op.execute(f"ANALYZE {TABLE}")
        return

    with migration.autocommit_block():
        op.execute("SET statement_timeout = 0")  # a server-wide limit must not cut a build
        for name, columns in INDEXES.items():
            if not migration.as_sql and _index_is_invalid(name):
                log.warning("index %s is INVALID (an earlier build failed): rebuilding", name)
                op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
            op.create_index(
                name, TABLE, list(columns), postgresql_concurrently=True, if_not_exists=True
            )
        op.execute(f"VACUUM (ANALYZE) {TABLE}")
        for name, violation in CONSTRAINTS.items():
            _validate(name, violation, offline=migration.as_sql)
        op.execute("RESET statement_timeout")


def _refill_if_a_downgrade_was_interrupted() -> None:
    """A downgrade of 0003 killed half way leaves us at 0003 with snapshots partly
    cleared; the backfill engine refills them (and says so) before the indexes."""
    knobs = BackfillKnobs.from_sources(context.get_x_argument(as_dictionary=True), os.environ)
    engine = engine_for_bind(op.get_bind(), knobs)
    try:
        with op.get_context().autocommit_block():
            refill_after_interrupted_clear(engine, knobs)
    finally:
        engine.dispose()


def _index_is_invalid(name: str) -> bool:
    row = (
        op.get_bind()
        .execute(
            sa.text(
                "SELECT NOT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE c.relname = :name AND pg_table_is_visible(c.oid)"
            ),
            {"name": name},
        )
        .scalar()
    )
    return bool(row)


def _validate(name: str, violation: str, *, offline: bool) -> None:
    statement = f"ALTER TABLE {TABLE} VALIDATE CONSTRAINT {name}"
    if offline:
        op.execute(statement)
        return
    bind = op.get_bind()
    validated = bind.execute(
        sa.text("SELECT convalidated FROM pg_constraint WHERE conname = :name"),
        {"name": name},
    ).scalar()
    if validated is None:
        log.warning("constraint %s does not exist; nothing to validate", name)
        return
    if validated:
        return
    bad = bind.execute(
        sa.text(f"SELECT count(*) FROM {TABLE} s WHERE {violation}")  # noqa: S608 - fixed SQL
    ).scalar_one()
    if bad:
        examples = (
            bind.execute(
                sa.text(
                    f"SELECT s.session_id FROM {TABLE} s WHERE {violation} "  # noqa: S608
                    "ORDER BY s.session_id LIMIT :n"
                ),
                {"n": EXAMPLES},
            )
            .scalars()
            .all()
        )
        log.warning(
            "constraint %s left NOT VALID: %d existing rows violate it (e.g. session_id %s); "
            "fix them, then run: %s",
            name,
            bad,
            ", ".join(map(repr, examples)),
            statement,
        )
        return
    op.execute(statement)
    log.info("constraint %s validated", name)


def downgrade() -> None:
    """Drop the snapshot indexes (constraints stay as they are; 0002 owns them)."""
    migration = op.get_context()
    if migration.dialect.name != "postgresql":
        for name in INDEXES:
            op.drop_index(name, table_name=TABLE, if_exists=True)
        return
    with migration.autocommit_block():
        for name in INDEXES:
            op.drop_index(name, table_name=TABLE, postgresql_concurrently=True, if_exists=True)
