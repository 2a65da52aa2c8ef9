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
0002 are validated (SHARE UPDATE EXCLUSIVE: writes go on), each under the short
``lock_timeout`` of every DDL here, retried (:mod:`cowrieprocessor.db.ddl`). The builds
run with ``statement_timeout = 0`` and ``lock_timeout = 0``, said explicitly: a build
waits for every older transaction, and either limit would cut it and leave an INVALID
index. The offline script (``--sql``) sets the same timeouts around the same statements.
A constraint is validated under the name the catalog gives it, quoted by the dialect.
Rows that violate one (an adopted database's old data) make the validation fail, which
leaves that constraint unvalidated and changes nothing else; then a warning names the
count and a few session ids: a deploy must not fail on old data it did not write. The
violating rows are counted only then, so clean data is read once, by the validation.

Adoption: an index whose key columns are the ones needed, whatever its name (upstream's
``idx_session_source_ip`` and the like), is reused and never duplicated; the ledger
records it as adopted, and the downgrade drops only the indexes this revision created.
Each created index is recorded (and committed) *before* its build starts, so a build
that a crash interrupts is still known as ours. The constraints validated are the ones
found by definition (ours, or the adopted CHECK and FK).

A partitioned ``session_summaries`` (PostgreSQL refuses ``CONCURRENTLY`` on it): each
index is created ``ON ONLY`` the table, built ``CONCURRENTLY`` on each partition and
attached; the foreign key, which 0002 put ``NOT VALID`` on each partition, is
validated there and then added to the table; the downgrade drops a partitioned index
with a plain ``DROP INDEX`` (:mod:`cowrieprocessor.db.partitioned_ddl`, docs/scale-out.md).

One repair comes first: if a downgrade of 0003 was interrupted half way, the database
is stamped at 0003 with some snapshots already cleared; they are refilled here (by the
backfill engine) so that head always means "backfilled".
"""

import logging
from collections.abc import Sequence
from contextlib import nullcontext

import sqlalchemy as sa
from alembic import op

from cowrieprocessor.backfill import control
from cowrieprocessor.backfill.alembic_ops import batch_engine, engine_for_bind, migration_knobs
from cowrieprocessor.backfill.jobs import refill_after_interrupted_clear
from cowrieprocessor.db import adoption, ledger, partitioned_ddl, partitions
from cowrieprocessor.db.ddl import (
    Statement,
    no_lock_timeout,
    validate_constraint,
)
from cowrieprocessor.db.ledger import ADOPTED, CREATED

revision: str = "0004_snapshot_indexes"
down_revision: str | Sequence[str] | None = "0003_backfill_session_snapshots"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("cowrieprocessor.migrations.0004")

TABLE = "session_summaries"
# Our names, stated here and never read from the library: a later edit there must not
# change what this revision does. Index name -> key columns; the covering index serves
# the analysts' query (module docstring) and its name is ours alone.
COVERING_INDEX = "ix_session_summaries_snapshot_country_snapshot_asn_session_id"
INDEXES: dict[str, tuple[str, ...]] = {
    "ix_session_summaries_source_ip": ("source_ip",),
    "ix_session_summaries_snapshot_asn": ("snapshot_asn",),
    "ix_session_summaries_snapshot_country": ("snapshot_country",),
    "ix_session_summaries_snapshot_ip_type": ("snapshot_ip_type",),
    COVERING_INDEX: ("snapshot_country", "snapshot_asn", "session_id"),
}
# The constraints 0002 created under its names (validated here when 0002 created them);
# on a partitioned table the foreign key is added to the table here.
FK_NAME = "fk_session_summaries_source_ip_ip_inventory"
FK_REFERENCES = ("source_ip", "ip_inventory", "ip_address")  # column -> table (column)
CK_NAME = "ck_session_summaries_snapshot_country_iso2"
# Each constraint's kind with the rows that would violate it.
VIOLATIONS: dict[str, str] = {
    "FK": (
        "s.source_ip IS NOT NULL AND NOT EXISTS "
        "(SELECT 1 FROM ip_inventory i WHERE i.ip_address = s.source_ip)"
    ),
    "CHECK": "s.snapshot_country IS NOT NULL AND s.snapshot_country !~ '^[A-Z]{2}$'",
}
OUR_CONSTRAINTS = {"FK": FK_NAME, "CHECK": CK_NAME}
EXAMPLES = 5


def upgrade() -> None:
    """Build the missing snapshot indexes, refresh the visibility map, validate constraints."""
    migration = op.get_context()
    if not migration.as_sql:
        refill_if_interrupted()
    if migration.dialect.name != "postgresql":
        build_indexes(concurrently=False)
        op.execute(f"ANALYZE {TABLE}")
        return
    with migration.autocommit_block():
        op.execute("SET statement_timeout = 0")  # a server-wide limit must not cut a build
        build_indexes(concurrently=True)
        op.execute(f"VACUUM (ANALYZE) {TABLE}")
        for kind in VIOLATIONS:  # each under the short lock_timeout, retried
            validate_or_report(kind)
        op.execute("RESET statement_timeout")


def refill_if_interrupted() -> None:
    """A downgrade of 0003 killed half way leaves us at 0003 with snapshots partly
    cleared; the backfill engine refills them (and says so) before the indexes."""
    knobs = migration_knobs()
    with batch_engine(knobs) as engine:
        refill_after_interrupted_clear(engine, knobs)


def build_indexes(*, concurrently: bool) -> None:
    """Each index of INDEXES unless an equivalent one exists (then it is adopted)."""
    offline = op.get_context().as_sql
    bind = None if offline else op.get_bind()
    ours = [] if bind is None else ledger.names(ledger.entries(bind, revision), CREATED)
    partitioned = bind is not None and partitions.is_partitioned(bind)
    for name, columns in INDEXES.items():
        if bind is not None:
            existing = adoption.find_index(bind, columns, ours=INDEXES)
            if existing is not None:
                if existing.name not in ours:
                    ledger.record(bind, revision, "index", existing.name, ADOPTED)
                    log.info("reusing index %s (%s)", existing.name, ", ".join(columns))
                continue
            if partitioned:  # INVALID there means: not every partition attached yet
                ledger.record(bind, revision, "index", name, CREATED, ", ".join(columns))
                partitioned_ddl.build_index(bind, name, columns, table=TABLE)
                continue
            if concurrently and adoption.index_is_invalid(bind, name, TABLE):
                log.warning("index %s is INVALID (an earlier build failed): rebuilding", name)
                with no_lock_timeout():
                    op.drop_index(
                        name, table_name=TABLE, postgresql_concurrently=True, if_exists=True
                    )
            # recorded before the build: a build cut short is still ours to drop
            ledger.record(bind, revision, "index", name, CREATED, ", ".join(columns))
        with no_lock_timeout() if concurrently else nullcontext():
            op.create_index(
                name,
                TABLE,
                list(columns),
                postgresql_concurrently=concurrently,
                if_not_exists=True,
            )


def validate_or_report(kind: str) -> None:
    """VALIDATE the constraint of ``kind`` (FK or CHECK) if it is NOT VALID; when old
    rows violate it, it stays NOT VALID, with a warning naming a few of them (counted
    only then: clean data is scanned once, by the validation)."""
    if op.get_context().as_sql:
        validate_constraint(_validate(OUR_CONSTRAINTS[kind]))
        return
    bind = op.get_bind()
    finder = adoption.find_source_ip_fk if kind == "FK" else adoption.find_country_check
    found = finder(bind)
    if found is None and kind == "FK" and partitions.is_partitioned(bind):
        partitioned_ddl.validate_leaf_keys(
            bind, FK_NAME, VIOLATIONS[kind], EXAMPLES, table=TABLE, references=FK_REFERENCES
        )
        return
    if found is None:
        log.warning("no %s constraint on %s; nothing to validate", kind, TABLE)
        return
    if found.valid:
        return
    statement = _validate(found.name)  # a name from the catalog: quoted by the dialect
    if validate_constraint(statement):
        log.info("constraint %s validated", found.name)
        return
    violation = VIOLATIONS[kind]
    bad = bind.execute(
        sa.text(f"SELECT count(*) FROM {TABLE} s WHERE {violation}")  # noqa: S608 - fixed SQL
    ).scalar_one()
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
        found.name,
        bad,
        ", ".join(map(repr, examples)),
        statement.sql(bind.dialect),
    )


def _validate(name: str) -> Statement:
    return Statement("ALTER TABLE {} VALIDATE CONSTRAINT {}", TABLE, name)


def refuse_beside_a_running_job(bind: sa.Connection) -> None:
    """A backfill or clear that runs now (started by hand) would go on beside a database
    stamped back at 0003 without its indexes: refuse before dropping anything. Asked on
    a connection of its own, which it ends (the migration's transaction stays as it is)."""
    engine = engine_for_bind(bind, migration_knobs())
    try:
        with engine.connect() as conn:
            control.refuse_if_running(conn)
    finally:
        engine.dispose()


def downgrade() -> None:
    """Drop the snapshot indexes this revision created; keep the ones it adopted."""
    migration = op.get_context()
    bind = None if migration.as_sql else op.get_bind()
    if bind is not None:
        refuse_beside_a_running_job(bind)
    # adopted before the ledger existed: only the covering index's name is ours alone
    drop = ledger.created(
        bind, revision, "index", before_ledger=list(INDEXES), adopted_before_ledger=[COVERING_INDEX]
    )
    concurrently = migration.dialect.name == "postgresql"
    partitioned = bind is not None and partitions.is_partitioned(bind)
    with migration.autocommit_block() if concurrently else nullcontext():
        if concurrently and drop:
            op.execute("SET statement_timeout = 0")  # as for the builds
        for name in drop:
            if partitioned:
                assert bind is not None
                partitioned_ddl.drop_index(bind, name, table=TABLE)
                continue
            with no_lock_timeout() if concurrently else nullcontext():
                op.drop_index(
                    name, table_name=TABLE, postgresql_concurrently=concurrently, if_exists=True
                )
        if concurrently and drop:
            op.execute("RESET statement_timeout")
    ledger.finish_downgrade(bind, revision)
