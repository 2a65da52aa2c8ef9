"""Backfill the five snapshot columns of session_summaries from ip_inventory.

Revision ID: 0003_backfill_session_snapshots
Revises: 0002_snapshot_columns
Create Date: 2026-11-27

The story: 1.68M sessions were ingested without their snapshot columns, while their
IPs sit enriched in ``ip_inventory``. This revision fills, for every session whose
canonical IP is in the inventory, each snapshot column that is still NULL:
``source_ip``, ``snapshot_asn``, ``snapshot_country``, ``snapshot_ip_type``,
``enrichment_at``. Nothing that has a value is overwritten; unmatched sessions keep
NULLs.

How: it walks the table in key ranges (``session_id`` on PostgreSQL, partition by
partition when the table is partitioned; ``rowid`` on SQLite), one set-based
``UPDATE ... FROM ip_inventory`` per range, each committed on its own (outside the
migration's transaction, in ``autocommit_block()``) together with its progress record
and its rollback record (what it wrote, so that the downgrade NULLs exactly that:
values the loader wrote, before or since, survive). Ranges are sized to take about
``batch_time`` each unless fixed by the knobs. Progress is logged; an interrupted
upgrade resumes where it stopped. The engine is :mod:`cowrieprocessor.backfill`, shared
with ``cowrie-db backfill``; it carries its own SQL and never imports the ORM models.

Knobs: ``-x name=value`` or ``COWRIE_BACKFILL_<NAME>``, validated before anything is
written. Their names, defaults and meaning are in one table,
:mod:`cowrieprocessor.backfill.knobs` (``cowrie-db backfill --help``, docs/runbook.md
section 3); this revision does not repeat them.

Offline (``--sql``): PostgreSQL gets a DO block running the same batches with a
COMMIT after each; SQLite gets one statement over the whole table. Both write the
rollback record, and the offline downgrade undoes what it names.
"""

from collections.abc import Sequence

from alembic import op
from sqlalchemy import TextClause

from cowrieprocessor.backfill import BACKFILL_JOB, run_backfill, undo_backfill
from cowrieprocessor.backfill import sql as backfill_sql
from cowrieprocessor.backfill.alembic_ops import batch_engine, migration_knobs
from cowrieprocessor.backfill.knobs import KnobError

revision: str = "0003_backfill_session_snapshots"
down_revision: str | Sequence[str] | None = "0002_snapshot_columns"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Fill the NULL snapshot columns of every matched session, batch by batch."""
    knobs = migration_knobs()  # a bad knob fails here, before any write
    if op.get_context().as_sql:
        if knobs.defer_indexes:
            raise KnobError(
                "defer_indexes=on: the offline script (--sql) neither drops nor builds "
                "indexes; run the upgrade online, or the script without the knob"
            )
        if knobs.walk_order == "blocks":
            raise KnobError(
                f"walk_order={knobs.walk_order}: the offline script (--sql) walks ranges of "
                "session_id; run the upgrade online, or the script without the knob"
            )
        dialect = op.get_context().dialect.name
        _emit(
            backfill_sql.offline_backfill(
                dialect, knobs.batch_size, BACKFILL_JOB, knobs.lock_timeout
            )
        )
        return
    with batch_engine(knobs) as engine:
        run_backfill(engine, knobs)


def downgrade() -> None:
    """NULL exactly the values the backfill wrote (its rollback record), batch by batch."""
    knobs = migration_knobs()
    if op.get_context().as_sql:
        _emit(backfill_sql.offline_undo(op.get_context().dialect, knobs.lock_timeout))
        return
    with batch_engine(knobs) as engine:
        undo_backfill(engine, knobs)


def _emit(statements: list[TextClause]) -> None:
    """Offline: the statements for a DBA to review, outside the migration's transaction."""
    with op.get_context().autocommit_block():
        for statement in statements:
            op.execute(statement)
