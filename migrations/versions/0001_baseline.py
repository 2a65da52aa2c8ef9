"""Baseline: the schema as cowrieprocessor built it before the snapshot fix.

Revision ID: 0001_baseline
Revises:
Create Date: 2026-11-27

``asn_inventory``, ``ip_inventory``, ``session_summaries`` (without the five snapshot
columns) and ``raw_events``, with their indexes.

Adoption: on a database that already has these tables (one that cowrieprocessor's own
schema code built, with its ``schema_state`` table, or any earlier one), this revision
creates nothing. It checks that what exists is usable (the tables, and the columns and
types the backfill reads; :mod:`cowrieprocessor.db.adoption`), refuses an incompatible
database before any change with a message naming each problem, and records in the
ledger that it adopted the tables, so that its downgrade never drops them.
``alembic stamp 0001_baseline`` still works and skips this check (0002 repeats it).

``ip_inventory.geo_country`` is a STORED generated column on both dialects, derived
from the enrichment JSON: MaxMind's country, else Cymru's, else DShield's, else
``'XX'`` (unknown), upper-cased. ``ip_types`` is ``text[]`` on PostgreSQL and a JSON
array on SQLite. JSON is JSONB on PostgreSQL.
"""

import logging
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from cowrieprocessor.db import adoption, ledger
from cowrieprocessor.db.ddl import set_local_timeouts
from cowrieprocessor.errors import IncompatibleSchema

revision: str = "0001_baseline"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("cowrieprocessor.migrations.0001")
# Children first: the order to drop them in.
TABLES = ("raw_events", "session_summaries", "ip_inventory", "asn_inventory")

GEO_COUNTRY_SQL = {
    "postgresql": (
        "upper(COALESCE(enrichment -> 'maxmind' ->> 'country', "
        "enrichment -> 'cymru' ->> 'country', "
        "enrichment -> 'dshield' -> 'ip' ->> 'ascountry', 'XX'))"
    ),
    "sqlite": (
        "upper(COALESCE(json_extract(enrichment, '$.maxmind.country'), "
        "json_extract(enrichment, '$.cymru.country'), "
        "json_extract(enrichment, '$.dshield.ip.ascountry'), 'XX'))"
    ),
}
# What 0002 and 0004 will create where nothing equivalent exists, under these names:
# the plan this revision logs when it adopts a database (stated here, not read from
# the library, so that this revision keeps meaning what it meant).
LATER_NAMES = adoption.OurNames(
    fk="fk_session_summaries_source_ip_ip_inventory",
    check="ck_session_summaries_snapshot_country_iso2",
    indexes={
        "ix_session_summaries_source_ip": ("source_ip",),
        "ix_session_summaries_snapshot_asn": ("snapshot_asn",),
        "ix_session_summaries_snapshot_country": ("snapshot_country",),
        "ix_session_summaries_snapshot_ip_type": ("snapshot_ip_type",),
        "ix_session_summaries_snapshot_country_snapshot_asn_session_id": (
            "snapshot_country",
            "snapshot_asn",
            "session_id",
        ),
    },
)


def _timestamps() -> list[sa.Column[Any]]:
    return [
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
    ]


def _counter(name: str) -> sa.Column[Any]:
    return sa.Column(name, sa.Integer(), server_default=sa.text("0"), nullable=False)


def upgrade() -> None:
    """Create the pre-snapshot schema, or adopt the one that is there."""
    dialect = op.get_context().dialect.name
    if dialect not in GEO_COUNTRY_SQL:
        raise IncompatibleSchema(f"unsupported dialect {dialect!r}: use PostgreSQL 13+ or SQLite")
    if not op.get_context().as_sql:
        found = adoption.assess(op.get_bind(), LATER_NAMES)
        if not found.empty:
            adoption.require_adoptable(found)
            for table in found.tables:
                ledger.record(op.get_bind(), revision, "table", table, ledger.ADOPTED)
            log.info("%s", found.summary())
            return
    _create(dialect)
    if not op.get_context().as_sql:
        for table in TABLES:
            ledger.record(op.get_bind(), revision, "table", table, ledger.CREATED)


def _create(dialect: str) -> None:
    if dialect == "postgresql":  # new tables, but their foreign keys lock what they reference
        set_local_timeouts()
    json_type = postgresql.JSONB() if dialect == "postgresql" else sa.JSON()
    ip_types_type = postgresql.ARRAY(sa.Text()) if dialect == "postgresql" else sa.JSON()
    tstz = sa.DateTime(timezone=True)

    op.create_table(
        "asn_inventory",
        sa.Column("asn_number", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("organization_name", sa.String(255)),
        sa.Column("organization_country", sa.String(2)),
        sa.Column("rir_registry", sa.String(16)),
        sa.Column("asn_type", sa.String(32)),
        sa.Column("first_seen", tstz, nullable=False),
        sa.Column("last_seen", tstz, nullable=False),
        _counter("unique_ip_count"),
        _counter("total_session_count"),
        sa.Column("enrichment", json_type, server_default=sa.text("'{}'"), nullable=False),
        sa.Column("enrichment_updated_at", tstz),
        *_timestamps(),
        sa.PrimaryKeyConstraint("asn_number", name="pk_asn_inventory"),
    )

    op.create_table(
        "ip_inventory",
        sa.Column("ip_address", sa.String(45), nullable=False),
        sa.Column("current_asn", sa.Integer()),
        sa.Column("asn_last_verified", tstz),
        sa.Column("first_seen", tstz, nullable=False),
        sa.Column("last_seen", tstz, nullable=False),
        sa.Column("session_count", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("enrichment", json_type, server_default=sa.text("'{}'"), nullable=False),
        sa.Column("enrichment_updated_at", tstz),
        sa.Column("enrichment_version", sa.String(10), server_default=sa.text("'2.2'")),
        sa.Column(
            "geo_country",
            sa.String(2),
            sa.Computed(sa.text(GEO_COUNTRY_SQL[dialect]), persisted=True),
        ),
        sa.Column("ip_types", ip_types_type),
        sa.Column("is_scanner", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("is_bogon", sa.Boolean(), server_default=sa.false(), nullable=False),
        *_timestamps(),
        sa.PrimaryKeyConstraint("ip_address", name="pk_ip_inventory"),
        sa.ForeignKeyConstraint(
            ["current_asn"],
            ["asn_inventory.asn_number"],
            name="fk_ip_inventory_current_asn_asn_inventory",
        ),
    )
    op.create_index("ix_ip_inventory_current_asn", "ip_inventory", ["current_asn"])
    op.create_index("ix_ip_inventory_geo_country", "ip_inventory", ["geo_country"])

    op.create_table(
        "session_summaries",
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("first_event_at", tstz),
        sa.Column("last_event_at", tstz),
        _counter("event_count"),
        _counter("command_count"),
        _counter("file_downloads"),
        _counter("login_attempts"),
        _counter("ssh_key_injections"),
        _counter("unique_ssh_keys"),
        sa.Column("vt_flagged", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("dshield_flagged", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("risk_score", sa.Integer()),
        sa.Column("matcher", sa.String(32)),
        sa.Column("source_files", json_type),
        sa.Column("enrichment", json_type),
        *_timestamps(),
        sa.PrimaryKeyConstraint("session_id", name="pk_session_summaries"),
    )
    op.create_index("ix_session_summaries_first_event_at", "session_summaries", ["first_event_at"])
    op.create_index("ix_session_summaries_last_event_at", "session_summaries", ["last_event_at"])
    op.create_index(
        "ix_session_summaries_vt_flagged_dshield_flagged",
        "session_summaries",
        ["vt_flagged", "dshield_flagged"],
    )

    op.create_table(
        "raw_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("ingest_id", sa.String(64)),
        sa.Column("ingest_at", tstz, server_default=sa.func.now(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("source_offset", sa.BigInteger()),
        sa.Column("payload", json_type, nullable=False),
        sa.Column("payload_hash", sa.String(64)),
        sa.Column("risk_score", sa.Integer()),
        sa.Column("quarantined", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("session_id", sa.String(64)),
        sa.Column("event_type", sa.String(128)),
        sa.Column("event_timestamp", tstz),
        sa.PrimaryKeyConstraint("id", name="pk_raw_events"),
    )
    op.create_index("ix_raw_events_session_id", "raw_events", ["session_id"])
    op.create_index("ix_raw_events_event_type", "raw_events", ["event_type"])
    op.create_index("ix_raw_events_event_timestamp", "raw_events", ["event_timestamp"])


def downgrade() -> None:
    """Drop the tables this revision created (children first); never adopted ones."""
    bind = None if op.get_context().as_sql else op.get_bind()
    if bind is not None and ledger.ledger_exists(bind):
        ours = ledger.names(ledger.entries(bind, revision), ledger.CREATED, "table")
    else:  # no ledger at all: the stamped-upstream rule of ledger.created applies
        ours = ledger.created(
            bind, revision, "table", before_ledger=TABLES, adopted_before_ledger=()
        )
    if op.get_context().dialect.name == "postgresql":  # never queue the loader behind a drop
        set_local_timeouts()
    for table in TABLES:
        if table in ours:
            op.drop_table(table)
    ledger.finish_downgrade(bind, revision)
    if bind is not None:
        ledger.drop_ledger_if_empty(bind)
