"""ORM models for the schema as it stands at Alembic head.

These serve the application and the CLI. Migrations never import them: a revision
describes the tables it touches itself, so it keeps meaning what it meant the day it
was written. ``tests/test_migrations_*`` check, through pytest-alembic, that these
models and the DDL that the migrations produce stay identical.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ColumnElement

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# JSON is JSONB on PostgreSQL (indexable, binary) and JSON text on SQLite.
JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
# IP classifications, highest priority first: text[] on PostgreSQL, a JSON array on SQLite.
IPTypesType = sa.JSON().with_variant(postgresql.ARRAY(sa.Text()), "postgresql")
Timestamp = sa.DateTime(timezone=True)


class GeoCountryExpression(ColumnElement[str]):
    """``geo_country``'s generation expression, rendered for the dialect at hand."""

    type = sa.String(2)
    inherit_cache = True


@compiles(GeoCountryExpression, "postgresql")
def _geo_country_pg(_element: GeoCountryExpression, _compiler: SQLCompiler, **_kw: Any) -> str:
    return (
        "upper(COALESCE(enrichment -> 'maxmind' ->> 'country', "
        "enrichment -> 'cymru' ->> 'country', "
        "enrichment -> 'dshield' -> 'ip' ->> 'ascountry', 'XX'))"
    )


@compiles(GeoCountryExpression)
def _geo_country_sqlite(_element: GeoCountryExpression, _compiler: SQLCompiler, **_kw: Any) -> str:
    return (
        "upper(COALESCE(json_extract(enrichment, '$.maxmind.country'), "
        "json_extract(enrichment, '$.cymru.country'), "
        "json_extract(enrichment, '$.dshield.ip.ascountry'), 'XX'))"
    )


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


class ASNInventory(Base):
    __tablename__ = "asn_inventory"

    asn_number: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    organization_name: Mapped[str | None] = mapped_column(sa.String(255))
    organization_country: Mapped[str | None] = mapped_column(sa.String(2))
    rir_registry: Mapped[str | None] = mapped_column(sa.String(16))
    asn_type: Mapped[str | None] = mapped_column(sa.String(32))
    first_seen: Mapped[datetime] = mapped_column(Timestamp)
    last_seen: Mapped[datetime] = mapped_column(Timestamp)
    unique_ip_count: Mapped[int] = mapped_column(sa.Integer, server_default=sa.text("0"))
    total_session_count: Mapped[int] = mapped_column(sa.Integer, server_default=sa.text("0"))
    enrichment: Mapped[dict[str, Any]] = mapped_column(JSONType, server_default=sa.text("'{}'"))
    enrichment_updated_at: Mapped[datetime | None] = mapped_column(Timestamp)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=sa.func.now())
    updated_at: Mapped[datetime] = mapped_column(Timestamp, server_default=sa.func.now())


class IPInventory(Base):
    __tablename__ = "ip_inventory"
    __table_args__ = (
        sa.Index(None, "current_asn"),
        sa.Index(None, "geo_country"),
    )

    ip_address: Mapped[str] = mapped_column(sa.String(45), primary_key=True)
    current_asn: Mapped[int | None] = mapped_column(sa.ForeignKey("asn_inventory.asn_number"))
    asn_last_verified: Mapped[datetime | None] = mapped_column(Timestamp)
    first_seen: Mapped[datetime] = mapped_column(Timestamp)
    last_seen: Mapped[datetime] = mapped_column(Timestamp)
    session_count: Mapped[int] = mapped_column(sa.Integer, server_default=sa.text("1"))
    enrichment: Mapped[dict[str, Any]] = mapped_column(JSONType, server_default=sa.text("'{}'"))
    enrichment_updated_at: Mapped[datetime | None] = mapped_column(Timestamp)
    enrichment_version: Mapped[str | None] = mapped_column(
        sa.String(10), server_default=sa.text("'2.2'")
    )
    geo_country: Mapped[str | None] = mapped_column(
        sa.String(2), sa.Computed(GeoCountryExpression(), persisted=True)
    )
    ip_types: Mapped[list[str] | None] = mapped_column(IPTypesType)
    is_scanner: Mapped[bool] = mapped_column(sa.Boolean, server_default=sa.false())
    is_bogon: Mapped[bool] = mapped_column(sa.Boolean, server_default=sa.false())
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=sa.func.now())
    updated_at: Mapped[datetime] = mapped_column(Timestamp, server_default=sa.func.now())


SNAPSHOT_COLUMNS = (
    "source_ip",
    "snapshot_asn",
    "snapshot_country",
    "snapshot_ip_type",
    "enrichment_at",
)


def _counter() -> Mapped[int]:
    return mapped_column(sa.Integer, server_default=sa.text("0"))


class SessionSummary(Base):
    __tablename__ = "session_summaries"
    __table_args__ = (
        sa.Index(None, "first_event_at"),
        sa.Index(None, "last_event_at"),
        sa.Index(None, "vt_flagged", "dshield_flagged"),
        # Snapshot indexes (revision 0004), built after the backfill.
        sa.Index(None, "source_ip"),
        sa.Index(None, "snapshot_asn"),
        sa.Index(None, "snapshot_country"),
        sa.Index(None, "snapshot_ip_type"),
        # Covers the analysts' filter `snapshot_country = ? AND snapshot_asn = ?` with an
        # index-only scan; session_id is a key column so SQLite can cover it too.
        sa.Index(None, "snapshot_country", "snapshot_asn", "session_id"),
        sa.CheckConstraint(
            "snapshot_country IS NULL OR snapshot_country GLOB '[A-Z][A-Z]'",
            name="snapshot_country_iso2",
        ).ddl_if(dialect="sqlite"),
        sa.CheckConstraint(
            "snapshot_country IS NULL OR snapshot_country ~ '^[A-Z]{2}$'",
            name="snapshot_country_iso2",
        ).ddl_if(dialect="postgresql"),
    )

    session_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    first_event_at: Mapped[datetime | None] = mapped_column(Timestamp)
    last_event_at: Mapped[datetime | None] = mapped_column(Timestamp)
    event_count: Mapped[int] = _counter()
    command_count: Mapped[int] = _counter()
    file_downloads: Mapped[int] = _counter()
    login_attempts: Mapped[int] = _counter()
    ssh_key_injections: Mapped[int] = _counter()
    unique_ssh_keys: Mapped[int] = _counter()
    vt_flagged: Mapped[bool] = mapped_column(sa.Boolean, server_default=sa.false())
    dshield_flagged: Mapped[bool] = mapped_column(sa.Boolean, server_default=sa.false())
    risk_score: Mapped[int | None] = mapped_column(sa.Integer)
    matcher: Mapped[str | None] = mapped_column(sa.String(32))
    source_files: Mapped[Any | None] = mapped_column(JSONType)
    enrichment: Mapped[Any | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=sa.func.now())
    updated_at: Mapped[datetime] = mapped_column(Timestamp, server_default=sa.func.now())
    # The five snapshot columns: the attacking IP as it was at the time of the attack.
    source_ip: Mapped[str | None] = mapped_column(
        sa.String(45), sa.ForeignKey("ip_inventory.ip_address")
    )
    snapshot_asn: Mapped[int | None] = mapped_column(sa.Integer)
    snapshot_country: Mapped[str | None] = mapped_column(sa.String(2))
    snapshot_ip_type: Mapped[str | None] = mapped_column(sa.Text)
    enrichment_at: Mapped[datetime | None] = mapped_column(Timestamp)


class RawEvent(Base):
    __tablename__ = "raw_events"
    __table_args__ = (
        sa.Index(None, "session_id"),
        sa.Index(None, "event_type"),
        sa.Index(None, "event_timestamp"),
    )

    id: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True
    )
    ingest_id: Mapped[str | None] = mapped_column(sa.String(64))
    ingest_at: Mapped[datetime] = mapped_column(Timestamp, server_default=sa.func.now())
    source: Mapped[str] = mapped_column(sa.Text)
    source_offset: Mapped[int | None] = mapped_column(sa.BigInteger)
    payload: Mapped[Any] = mapped_column(JSONType)
    payload_hash: Mapped[str | None] = mapped_column(sa.String(64))
    risk_score: Mapped[int | None] = mapped_column(sa.Integer)
    quarantined: Mapped[bool] = mapped_column(sa.Boolean, server_default=sa.false())
    session_id: Mapped[str | None] = mapped_column(sa.String(64))
    event_type: Mapped[str | None] = mapped_column(sa.String(128))
    event_timestamp: Mapped[datetime | None] = mapped_column(Timestamp)
