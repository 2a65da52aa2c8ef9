"""Databases shaped like the ones in the field, built without our Alembic revisions.

Why one module of ~850 lines: about 420 of them are upstream's catalog written down as
fixed DDL (data, not logic, read against upstream-schema.md), and the seeder and the
loader's upsert below insert into exactly those columns: a column renamed in the DDL must
be renamed in their statements in the same edit, so they are kept in one place.

The databases this project adopts were built by cowrieprocessor's own schema code
(``cowrieprocessor/db/migrations.py`` upstream: ``Base.metadata.create_all()`` from its
models, then ``apply_migrations()`` steps up to version 17, the version kept as a string
in ``schema_state``). That code cannot build a fresh PostgreSQL database at its latest
version, so it cannot be run here; this module writes down the catalog it leaves behind
(as described in the project's reference notes, "upstream-schema.md") as fixed DDL, with
the names, types and duplicate indexes upstream really creates.

Where the names come from (upstream, datagen24/cowrieprocessor at 57326ea):

- ``schema_state``, ``session_summaries``, ``raw_events``, ``asn_inventory``: the ORM
  models through ``create_all()`` (naming convention ``pk_%(table_name)s``,
  ``ix_%(column_0_label)s``): hence ``pk_session_summaries``, ``json`` (not jsonb)
  enrichment and payload, and the ``ix_session_summaries_*`` index family.
- ``ip_inventory``: v16 drops the model's table and recreates it from hand-written DDL
  (``jsonb``, generated ``geo_country``/``is_scanner``/``is_bogon``, ``ip_types text[]``,
  ``ip_inventory_pkey``); v16 also adds ``idx_session_*``, the BRIN indexes,
  ``snapshot_country_iso`` and the two foreign keys; v17 adds the clustering columns
  and ``idx_session_ssh_key_fp`` / ``_password_hash`` / ``_command_sig``.
- ``raw_events`` also carries v2's ``uq_raw_events_source_gen``, a unique index that
  duplicates the model's ``uq_raw_events_source_offset`` constraint.

Every statement here is a fixed string; values are bound parameters.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

SCHEMA_VERSION = 17
SCHEMA_VERSION_KEY = "schema_version"  # upstream's key in schema_state; the value is text
INDEX_FAMILIES = ("both", "idx")

T0 = datetime(2025, 1, 1, tzinfo=UTC)

# --------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------

_PG_SCHEMA_STATE = """
CREATE TABLE schema_state (
    key VARCHAR(128) NOT NULL,
    value VARCHAR(256) NOT NULL,
    CONSTRAINT pk_schema_state PRIMARY KEY (key)
)"""

_PG_ASN_INVENTORY = """
CREATE TABLE asn_inventory (
    asn_number INTEGER NOT NULL,
    organization_name TEXT,
    organization_country VARCHAR(2),
    rir_registry VARCHAR(10),
    asn_type TEXT,
    is_known_hosting BOOLEAN DEFAULT false NOT NULL,
    is_known_vpn BOOLEAN DEFAULT false NOT NULL,
    first_seen TIMESTAMP WITH TIME ZONE NOT NULL,
    last_seen TIMESTAMP WITH TIME ZONE NOT NULL,
    unique_ip_count INTEGER DEFAULT '0' NOT NULL,
    total_session_count INTEGER DEFAULT '0' NOT NULL,
    enrichment JSON DEFAULT '{}' NOT NULL,
    enrichment_updated_at TIMESTAMP WITH TIME ZONE,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    CONSTRAINT pk_asn_inventory PRIMARY KEY (asn_number)
)"""

# Upstream's v16 DDL, as written there (its FK is added afterwards, by name).
_PG_IP_INVENTORY = """
CREATE TABLE ip_inventory (
    ip_address            VARCHAR(45) PRIMARY KEY,
    current_asn           INTEGER,
    asn_last_verified     TIMESTAMPTZ,
    first_seen            TIMESTAMPTZ NOT NULL,
    last_seen             TIMESTAMPTZ NOT NULL,
    session_count         INTEGER DEFAULT 1 CHECK (session_count >= 0),
    enrichment            JSONB NOT NULL DEFAULT '{}'::jsonb,
    enrichment_updated_at TIMESTAMPTZ,
    enrichment_version    VARCHAR(20) DEFAULT '2.2',
    geo_country           VARCHAR(2) GENERATED ALWAYS AS (
        UPPER(COALESCE(
            enrichment->'maxmind'->>'country',
            enrichment->'cymru'->>'country',
            enrichment->'dshield'->'ip'->>'ascountry',
            'XX'
        ))
    ) STORED,
    ip_types              TEXT[] DEFAULT ARRAY[]::text[],
    is_scanner            BOOLEAN GENERATED ALWAYS AS (
        COALESCE((enrichment->'greynoise'->>'noise')::boolean, false)
    ) STORED,
    is_bogon              BOOLEAN GENERATED ALWAYS AS (
        COALESCE((enrichment->'validation'->>'is_bogon')::boolean, false)
    ) STORED,
    created_at            TIMESTAMPTZ DEFAULT NOW() NOT NULL,
    updated_at            TIMESTAMPTZ DEFAULT NOW() NOT NULL
)"""

# The model's column order; the snapshot columns sit where create_all() puts them.
_PG_SESSION_SUMMARIES = """
CREATE TABLE session_summaries (
    session_id VARCHAR(64) NOT NULL,
    source_ip VARCHAR(45),
    first_event_at TIMESTAMP WITH TIME ZONE,
    last_event_at TIMESTAMP WITH TIME ZONE,
    event_count INTEGER DEFAULT '0' NOT NULL,
    command_count INTEGER DEFAULT '0' NOT NULL,
    file_downloads INTEGER DEFAULT '0' NOT NULL,
    login_attempts INTEGER DEFAULT '0' NOT NULL,
    ssh_key_injections INTEGER DEFAULT '0' NOT NULL,
    unique_ssh_keys INTEGER DEFAULT '0' NOT NULL,
    vt_flagged BOOLEAN DEFAULT false NOT NULL,
    dshield_flagged BOOLEAN DEFAULT false NOT NULL,
    risk_score INTEGER,
    matcher VARCHAR(32),
    source_files JSON,
    ssh_key_fingerprint VARCHAR(128),
    password_hash VARCHAR(64),
    command_signature TEXT,
    snapshot_asn INTEGER,
    snapshot_country VARCHAR(2),
    {ip_type_column},
    enrichment JSON,
    enrichment_at TIMESTAMP WITH TIME ZONE,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    CONSTRAINT pk_session_summaries PRIMARY KEY (session_id)
)"""
_IP_TYPE_COLUMN = "snapshot_ip_type TEXT"
# Upstream's first v16 (commit dca6f82) added this array column; its fix script
# (scripts/migrations/fix_snapshot_ip_types_schema.py) later turned it into the above.
_LEGACY_IP_TYPES_COLUMN = "snapshot_ip_types TEXT[]"

_PG_RAW_EVENTS = """
CREATE TABLE raw_events (
    id SERIAL NOT NULL,
    ingest_id VARCHAR(64),
    ingest_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    source VARCHAR(512) NOT NULL,
    source_offset BIGINT,
    source_inode VARCHAR(128),
    source_generation INTEGER DEFAULT '0' NOT NULL,
    payload JSON NOT NULL,
    payload_hash VARCHAR(64),
    risk_score INTEGER,
    quarantined BOOLEAN DEFAULT false NOT NULL,
    session_id VARCHAR(64),
    event_type VARCHAR(128),
    event_timestamp TIMESTAMP WITH TIME ZONE,
    CONSTRAINT pk_raw_events PRIMARY KEY (id),
    CONSTRAINT uq_raw_events_source_offset
        UNIQUE (source, source_inode, source_generation, source_offset)
)"""

_PG_AFTER_TABLES = (
    # create_all(): the models' indexes
    "CREATE INDEX ix_raw_events_session_id ON raw_events (session_id)",
    "CREATE INDEX ix_raw_events_event_type ON raw_events (event_type)",
    "CREATE INDEX ix_raw_events_event_timestamp ON raw_events (event_timestamp)",
    "CREATE INDEX ix_raw_events_ingest_at ON raw_events (ingest_at)",
    "CREATE INDEX ix_asn_inventory_org_name ON asn_inventory (organization_name)",
    "CREATE INDEX ix_asn_inventory_asn_type ON asn_inventory (asn_type)",
    "CREATE INDEX ix_asn_inventory_session_count ON asn_inventory (total_session_count)",
    "CREATE INDEX ix_asn_inventory_first_seen ON asn_inventory (first_seen)",
    "CREATE INDEX ix_asn_inventory_last_seen ON asn_inventory (last_seen)",
    "CREATE INDEX ix_session_summaries_first_event ON session_summaries (first_event_at)",
    "CREATE INDEX ix_session_summaries_last_event ON session_summaries (last_event_at)",
    "CREATE INDEX ix_session_summaries_flags ON session_summaries (vt_flagged, dshield_flagged)",
    "CREATE INDEX ix_session_summaries_ssh_keys ON session_summaries (ssh_key_injections)",
    # v2
    "CREATE UNIQUE INDEX uq_raw_events_source_gen "
    "ON raw_events(source, source_inode, source_generation, source_offset)",
    # v16
    "CREATE INDEX idx_session_source_ip ON session_summaries(source_ip)",
    "CREATE INDEX idx_asn_org_name ON asn_inventory(organization_name)",
    "CREATE INDEX idx_asn_type ON asn_inventory(asn_type)",
    "CREATE INDEX idx_asn_session_count ON asn_inventory(total_session_count DESC)",
    "CREATE INDEX idx_ip_current_asn ON ip_inventory(current_asn)",
    "CREATE INDEX idx_ip_geo_country ON ip_inventory(geo_country)",
    "CREATE INDEX idx_ip_session_count ON ip_inventory(session_count DESC)",
    "CREATE INDEX idx_ip_enrichment_updated ON ip_inventory(enrichment_updated_at)",
    "CREATE INDEX idx_ip_staleness_active ON ip_inventory(enrichment_updated_at, last_seen) "
    "WHERE enrichment_updated_at IS NOT NULL",
    "ALTER TABLE session_summaries ADD CONSTRAINT snapshot_country_iso "
    "CHECK (snapshot_country IS NULL OR snapshot_country ~ '^[A-Z]{2}$')",
    "CREATE INDEX idx_session_first_event_brin ON session_summaries USING brin (first_event_at)",
    "CREATE INDEX idx_session_last_event_brin ON session_summaries USING brin (last_event_at)",
    "CREATE INDEX idx_session_snapshot_asn ON session_summaries(snapshot_asn)",
    "CREATE INDEX idx_session_snapshot_country ON session_summaries(snapshot_country)",
    "ALTER TABLE ip_inventory ADD CONSTRAINT fk_ip_current_asn "
    "FOREIGN KEY (current_asn) REFERENCES asn_inventory(asn_number)",
    "ALTER TABLE session_summaries ADD CONSTRAINT fk_session_source_ip "
    "FOREIGN KEY (source_ip) REFERENCES ip_inventory(ip_address)",
    # v17
    "CREATE INDEX idx_session_ssh_key_fp ON session_summaries(ssh_key_fingerprint)",
    "CREATE INDEX idx_session_password_hash ON session_summaries(password_hash)",
    "CREATE INDEX idx_session_command_sig ON session_summaries(command_signature)",
)

# The models' session_summaries indexes that a database built in one go also has (the
# "ix_" family). One brought up through the versions got its snapshot and clustering
# columns by ALTER TABLE, so create_all() never indexed them under these names.
_PG_IX_FAMILY = (
    "CREATE INDEX ix_session_summaries_source_ip ON session_summaries (source_ip)",
    "CREATE INDEX ix_session_summaries_snapshot_asn ON session_summaries (snapshot_asn)",
    "CREATE INDEX ix_session_summaries_snapshot_country ON session_summaries (snapshot_country)",
    "CREATE INDEX ix_session_summaries_ssh_key_fp ON session_summaries (ssh_key_fingerprint)",
    "CREATE INDEX ix_session_summaries_password_hash ON session_summaries (password_hash)",
    "CREATE INDEX ix_session_summaries_command_sig ON session_summaries (command_signature)",
)
_PG_IX_IP_TYPE = (
    "CREATE INDEX ix_session_summaries_snapshot_ip_type ON session_summaries (snapshot_ip_type)"
)

_SET_VERSION = "INSERT INTO schema_state (key, value) VALUES (:key, :value)"


def build_postgres(
    conn: sa.Connection,
    *,
    index_families: str = "both",
    legacy_ip_types_column: bool = False,
) -> None:
    """Create upstream's v17 catalog on an empty PostgreSQL database (no ``alembic_version``).

    ``index_families``: ``"both"`` (a database built in one go: the ``idx_`` and the
    ``ix_session_summaries_`` indexes on the snapshot columns) or ``"idx"`` (one brought
    up through the versions: only the ``idx_`` ones).
    ``legacy_ip_types_column``: ``snapshot_ip_types text[]`` instead of
    ``snapshot_ip_type text``, as before upstream's fix script ran.
    """
    if conn.dialect.name != "postgresql":
        raise ValueError(f"build_postgres needs PostgreSQL, not {conn.dialect.name}")
    if index_families not in INDEX_FAMILIES:
        raise ValueError(f"index_families must be one of {INDEX_FAMILIES}, not {index_families!r}")
    ip_type_column = _LEGACY_IP_TYPES_COLUMN if legacy_ip_types_column else _IP_TYPE_COLUMN
    statements: list[str] = [
        _PG_SCHEMA_STATE,
        _PG_ASN_INVENTORY,
        _PG_IP_INVENTORY,
        _PG_SESSION_SUMMARIES.replace("{ip_type_column}", ip_type_column),
        _PG_RAW_EVENTS,
        *_PG_AFTER_TABLES,
    ]
    if index_families == "both":
        statements += _PG_IX_FAMILY
        if not legacy_ip_types_column:
            statements.append(_PG_IX_IP_TYPE)
    for statement in statements:
        conn.exec_driver_sql(statement)
    conn.execute(sa.text(_SET_VERSION), {"key": SCHEMA_VERSION_KEY, "value": str(SCHEMA_VERSION)})


# --------------------------------------------------------------------------------------
# SQLite
# --------------------------------------------------------------------------------------

_SQLITE_SCHEMA_STATE = """
CREATE TABLE schema_state (
    "key" VARCHAR(128) NOT NULL,
    value VARCHAR(256) NOT NULL,
    CONSTRAINT pk_schema_state PRIMARY KEY ("key")
)"""

_SQLITE_RAW_EVENTS = """
CREATE TABLE raw_events (
    id INTEGER NOT NULL,
    ingest_id VARCHAR(64),
    ingest_at DATETIME DEFAULT CURRENT_TIMESTAMP NOT NULL,
    source VARCHAR(512) NOT NULL,
    source_offset BIGINT,
    source_inode VARCHAR(128),
    source_generation INTEGER DEFAULT '0' NOT NULL,
    payload JSON NOT NULL,
    payload_hash VARCHAR(64),
    risk_score INTEGER,
    quarantined BOOLEAN DEFAULT 0 NOT NULL,
    session_id VARCHAR(64),
    event_type VARCHAR(128),
    event_timestamp DATETIME,
    CONSTRAINT pk_raw_events PRIMARY KEY (id),
    CONSTRAINT uq_raw_events_source_offset
        UNIQUE (source, source_inode, source_generation, source_offset)
)"""

# Brought up through the versions: v16 returns at once on SQLite, so no source_ip and
# no snapshot columns; v17 appends the clustering columns.
_SQLITE_SESSION_SUMMARIES_UPGRADED = """
CREATE TABLE session_summaries (
    session_id VARCHAR(64) NOT NULL,
    first_event_at DATETIME,
    last_event_at DATETIME,
    event_count INTEGER DEFAULT '0' NOT NULL,
    command_count INTEGER DEFAULT '0' NOT NULL,
    file_downloads INTEGER DEFAULT '0' NOT NULL,
    login_attempts INTEGER DEFAULT '0' NOT NULL,
    ssh_key_injections INTEGER DEFAULT '0' NOT NULL,
    unique_ssh_keys INTEGER DEFAULT '0' NOT NULL,
    vt_flagged BOOLEAN DEFAULT 0 NOT NULL,
    dshield_flagged BOOLEAN DEFAULT 0 NOT NULL,
    risk_score INTEGER,
    matcher VARCHAR(32),
    source_files JSON,
    enrichment JSON,
    created_at DATETIME DEFAULT CURRENT_TIMESTAMP NOT NULL,
    updated_at DATETIME DEFAULT CURRENT_TIMESTAMP NOT NULL,
    ssh_key_fingerprint VARCHAR(128),
    password_hash VARCHAR(64),
    command_signature TEXT,
    CONSTRAINT pk_session_summaries PRIMARY KEY (session_id)
)"""

# Read back from upstream's apply_migrations() run on a new SQLite file: create_all()
# makes every model table, snapshot columns and (empty) inventory tables included.
_SQLITE_SESSION_SUMMARIES_FRESH = """
CREATE TABLE session_summaries (
    session_id VARCHAR(64) NOT NULL,
    source_ip VARCHAR(45),
    first_event_at DATETIME,
    last_event_at DATETIME,
    event_count INTEGER DEFAULT '0' NOT NULL,
    command_count INTEGER DEFAULT '0' NOT NULL,
    file_downloads INTEGER DEFAULT '0' NOT NULL,
    login_attempts INTEGER DEFAULT '0' NOT NULL,
    ssh_key_injections INTEGER DEFAULT '0' NOT NULL,
    unique_ssh_keys INTEGER DEFAULT '0' NOT NULL,
    vt_flagged BOOLEAN DEFAULT 0 NOT NULL,
    dshield_flagged BOOLEAN DEFAULT 0 NOT NULL,
    risk_score INTEGER,
    matcher VARCHAR(32),
    source_files JSON,
    ssh_key_fingerprint VARCHAR(128),
    password_hash VARCHAR(64),
    command_signature TEXT,
    snapshot_asn INTEGER,
    snapshot_country VARCHAR(2),
    snapshot_ip_type TEXT,
    enrichment JSON,
    enrichment_at DATETIME,
    created_at DATETIME DEFAULT CURRENT_TIMESTAMP NOT NULL,
    updated_at DATETIME DEFAULT CURRENT_TIMESTAMP NOT NULL,
    CONSTRAINT pk_session_summaries PRIMARY KEY (session_id),
    CONSTRAINT fk_session_summaries_source_ip_ip_inventory
        FOREIGN KEY(source_ip) REFERENCES ip_inventory (ip_address)
)"""

_SQLITE_ASN_INVENTORY_FRESH = """
CREATE TABLE asn_inventory (
    asn_number INTEGER NOT NULL,
    organization_name TEXT,
    organization_country VARCHAR(2),
    rir_registry VARCHAR(10),
    asn_type TEXT,
    is_known_hosting BOOLEAN DEFAULT 0 NOT NULL,
    is_known_vpn BOOLEAN DEFAULT 0 NOT NULL,
    first_seen DATETIME NOT NULL,
    last_seen DATETIME NOT NULL,
    unique_ip_count INTEGER DEFAULT '0' NOT NULL,
    total_session_count INTEGER DEFAULT '0' NOT NULL,
    enrichment JSON DEFAULT '{}' NOT NULL,
    enrichment_updated_at DATETIME,
    created_at DATETIME DEFAULT CURRENT_TIMESTAMP NOT NULL,
    updated_at DATETIME DEFAULT CURRENT_TIMESTAMP NOT NULL,
    CONSTRAINT pk_asn_inventory PRIMARY KEY (asn_number)
)"""

# The model's shape: no geo_country, no ip_types, no generated columns.
_SQLITE_IP_INVENTORY_FRESH = """
CREATE TABLE ip_inventory (
    ip_address VARCHAR(45) NOT NULL,
    current_asn INTEGER,
    asn_last_verified DATETIME,
    first_seen DATETIME NOT NULL,
    last_seen DATETIME NOT NULL,
    session_count INTEGER DEFAULT '1' NOT NULL,
    enrichment JSON DEFAULT '{}' NOT NULL,
    enrichment_updated_at DATETIME,
    enrichment_version VARCHAR(10) DEFAULT '2.2' NOT NULL,
    created_at DATETIME DEFAULT CURRENT_TIMESTAMP NOT NULL,
    updated_at DATETIME DEFAULT CURRENT_TIMESTAMP NOT NULL,
    CONSTRAINT pk_ip_inventory PRIMARY KEY (ip_address),
    CONSTRAINT fk_ip_inventory_current_asn_asn_inventory
        FOREIGN KEY(current_asn) REFERENCES asn_inventory (asn_number)
)"""

_SQLITE_COMMON_INDEXES = (
    "CREATE INDEX ix_raw_events_event_timestamp ON raw_events (event_timestamp)",
    "CREATE INDEX ix_raw_events_event_type ON raw_events (event_type)",
    "CREATE INDEX ix_raw_events_session_id ON raw_events (session_id)",
    "CREATE INDEX ix_raw_events_ingest_at ON raw_events (ingest_at)",
    "CREATE UNIQUE INDEX uq_raw_events_source_gen "
    "ON raw_events(source, source_inode, source_generation, source_offset)",
    "CREATE INDEX ix_session_summaries_first_event ON session_summaries (first_event_at)",
    "CREATE INDEX ix_session_summaries_last_event ON session_summaries (last_event_at)",
    "CREATE INDEX ix_session_summaries_flags ON session_summaries (vt_flagged, dshield_flagged)",
    "CREATE INDEX ix_session_summaries_ssh_keys ON session_summaries (ssh_key_injections)",
    "CREATE INDEX idx_session_ssh_key_fp ON session_summaries(ssh_key_fingerprint)",
    "CREATE INDEX idx_session_password_hash ON session_summaries(password_hash)",
    "CREATE INDEX idx_session_command_sig ON session_summaries(command_signature)",
)

_SQLITE_FRESH_INDEXES = (
    "CREATE INDEX ix_session_summaries_source_ip ON session_summaries (source_ip)",
    "CREATE INDEX ix_session_summaries_snapshot_asn ON session_summaries (snapshot_asn)",
    "CREATE INDEX ix_session_summaries_snapshot_country ON session_summaries (snapshot_country)",
    "CREATE INDEX ix_session_summaries_snapshot_ip_type ON session_summaries (snapshot_ip_type)",
    "CREATE INDEX ix_session_summaries_ssh_key_fp ON session_summaries (ssh_key_fingerprint)",
    "CREATE INDEX ix_session_summaries_password_hash ON session_summaries (password_hash)",
    "CREATE INDEX ix_session_summaries_command_sig ON session_summaries (command_signature)",
    "CREATE INDEX ix_asn_inventory_org_name ON asn_inventory (organization_name)",
    "CREATE INDEX ix_asn_inventory_asn_type ON asn_inventory (asn_type)",
    "CREATE INDEX ix_asn_inventory_session_count ON asn_inventory (total_session_count)",
    "CREATE INDEX ix_asn_inventory_first_seen ON asn_inventory (first_seen)",
    "CREATE INDEX ix_asn_inventory_last_seen ON asn_inventory (last_seen)",
    "CREATE INDEX ix_ip_inventory_current_asn ON ip_inventory (current_asn)",
    "CREATE INDEX ix_ip_inventory_first_seen ON ip_inventory (first_seen)",
    "CREATE INDEX ix_ip_inventory_last_seen ON ip_inventory (last_seen)",
    "CREATE INDEX ix_ip_inventory_session_count ON ip_inventory (session_count)",
    "CREATE INDEX ix_ip_inventory_enrichment_updated ON ip_inventory (enrichment_updated_at)",
)


def build_sqlite(conn: sa.Connection, *, fresh: bool = False) -> None:
    """Create upstream's v17 catalog on an empty SQLite database.

    Default (``fresh=False``): a database brought up through the versions, as
    upstream-schema.md describes it: ``session_summaries`` without ``source_ip`` and
    the snapshot columns (upstream's v16 returns at once on SQLite), ``raw_events``,
    ``schema_state`` at 17, and no inventory tables, so it cannot be backfilled.
    (Upstream's ``create_all()`` would in fact also have added empty, model-shaped
    ``ip_inventory`` / ``asn_inventory`` tables on its next run; ``fresh=True`` has them.)

    ``fresh=True``: exactly what upstream's ``apply_migrations()`` builds on a new SQLite
    file: the model's ``session_summaries`` with the five snapshot columns and a foreign
    key to an empty ``ip_inventory`` that has no ``geo_country`` nor ``ip_types``.
    """
    if conn.dialect.name != "sqlite":
        raise ValueError(f"build_sqlite needs SQLite, not {conn.dialect.name}")
    statements: list[str] = [_SQLITE_SCHEMA_STATE, _SQLITE_RAW_EVENTS]
    if fresh:
        statements += [
            _SQLITE_ASN_INVENTORY_FRESH,
            _SQLITE_IP_INVENTORY_FRESH,
            _SQLITE_SESSION_SUMMARIES_FRESH,
        ]
    else:
        statements.append(_SQLITE_SESSION_SUMMARIES_UPGRADED)
    statements += _SQLITE_COMMON_INDEXES
    if fresh:
        statements += _SQLITE_FRESH_INDEXES
    for statement in statements:
        conn.exec_driver_sql(statement)
    conn.execute(sa.text(_SET_VERSION), {"key": SCHEMA_VERSION_KEY, "value": str(SCHEMA_VERSION)})


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldSeed:
    """What :func:`seed_postgres` inserted."""

    sessions: int
    loader_written: tuple[str, ...]  # session ids whose snapshots the "loader" wrote


ASNS = (4134, 4837, 14061, 16509, 9009, 200000)
INVENTORY_SIZE = 60
# Every shape of enrichment.spur.client.types seen (or possible) in the field, with what
# the loader's rule makes of it (for reading the seed, not used by the code).
SPUR_TYPES_FORMS: tuple[Any, ...] = (
    ["RESIDENTIAL", "VPN"],  # -> VPN (priority)
    ["FOO", "BAR"],  # -> FOO (unknown types only: the first)
    "DATACENTER",  # -> DATACENTER (a plain string)
    [],  # -> NULL
    None,  # no spur section at all -> NULL
    [7, None, "TOR", {"x": 1}],  # -> TOR (non-strings skipped)
    ["mobile", "PROXY"],  # -> PROXY (case-sensitive: "mobile" is not MOBILE)
    "",  # -> NULL
    ["", "RESIDENTIAL", "MOBILE"],  # -> RESIDENTIAL
    "legacy-list-spur",  # spur is upstream's old list format: no client.types -> NULL
)
_NOT_IN_INVENTORY = ("203.0.113.7", "203.0.113.8", "2001:db8:ffff::1")

_INSERT_ASN = """
INSERT INTO asn_inventory (asn_number, organization_name, organization_country,
                           first_seen, last_seen, enrichment)
VALUES (:asn, :name, :country, :first_seen, :last_seen, CAST(:enrichment AS json))"""

_INSERT_IP = """
INSERT INTO ip_inventory (ip_address, current_asn, asn_last_verified, first_seen, last_seen,
                          session_count, enrichment, enrichment_updated_at, ip_types)
VALUES (:ip, :asn, :verified, :first_seen, :last_seen, :session_count,
        CAST(:enrichment AS jsonb), :updated_at, CAST(:ip_types AS text[]))"""

_INSERT_SESSION = """
INSERT INTO session_summaries (session_id, first_event_at, last_event_at, event_count,
                               enrichment, source_ip, snapshot_asn, snapshot_country,
                               snapshot_ip_type, enrichment_at)
VALUES (:session_id, :first_event_at, :last_event_at, :event_count, CAST(:enrichment AS json),
        :source_ip, :snapshot_asn, :snapshot_country, :snapshot_ip_type, :enrichment_at)"""

_INSERT_EVENT = """
INSERT INTO raw_events (source, source_offset, payload, session_id, event_type, event_timestamp)
VALUES (:source, :offset, CAST(:payload AS json), :session_id, :event_type, :at)"""


def _inventory_ip(n: int) -> str:
    # Two IPv6 addresses (lower case, as the loader stores them), the rest TEST-NET-2.
    if n == INVENTORY_SIZE - 2:
        return "2001:db8::a1"
    if n == INVENTORY_SIZE - 1:
        return "2001:db8:0:1::b2"
    return f"198.51.100.{n + 1}"


def _inventory_enrichment(n: int, rng: random.Random) -> dict[str, Any]:
    enrichment: dict[str, Any] = {}
    if n % 10 == 3 or n == 13:
        pass  # no country anywhere: geo_country 'XX'
    elif n == 4:
        enrichment["maxmind"] = {"country": ""}  # geo_country '' (not a country)
    elif n == 14:
        enrichment["maxmind"] = {"country": "A1"}  # MaxMind's "anonymous proxy"
    else:
        maxmind = rng.choice(["CN", "US", "RU", "de", None, None])
        cymru = rng.choice(["BR", "cn", None])
        dshield = rng.choice(["NL", None])
        if maxmind is not None:
            enrichment["maxmind"] = {"country": maxmind, "city": "x"}
        if cymru is not None or rng.random() < 0.5:
            enrichment["cymru"] = {"asn": rng.choice(ASNS), "country": cymru}
        if dshield is not None:
            enrichment["dshield"] = {"ip": {"ascountry": dshield, "count": rng.randrange(9)}}
    types = SPUR_TYPES_FORMS[n % len(SPUR_TYPES_FORMS)]
    if types == "legacy-list-spur":
        enrichment["spur"] = ["AS4134", "CHINANET", "CN", "DATACENTER"]
    elif types is not None:
        enrichment["spur"] = {"client": {"types": types, "count": 3}}
    enrichment["greynoise"] = {"noise": rng.random() < 0.3}
    if n % 11 == 0:
        enrichment["validation"] = {"is_bogon": True}
    return enrichment


def _messy(ip: str, k: int) -> str:
    """How an IP may be written in session enrichment: spaces, upper-case hex."""
    return (f"  {ip} ", ip.upper(), f"{ip.upper()}  ")[k % 3]


def seed_postgres(conn: sa.Connection, *, sessions: int = 400, seed: int = 1) -> FieldSeed:
    """Fill a :func:`build_postgres` database with a small dataset of every kind of session.

    Inventory: ``INVENTORY_SIZE`` IPs, countries from maxmind / cymru / dshield or none
    (``'XX'``), ``ip_types`` empty except for three, ``spur.client.types`` in each of
    ``SPUR_TYPES_FORMS``, ``current_asn`` and ``enrichment_updated_at`` sometimes NULL.
    Sessions cycle through: IP in ``session_metadata`` (clean or messy); only in
    ``dshield.ip.number``; both (different IPs); only in ``raw_events`` (with NULL
    timestamps, events without ``src_ip``, ties); ``source_ip`` set by upstream's v16;
    written whole or in part by the loader (values unlike today's inventory); IP not in
    the inventory; no IP at all; unusable metadata IPs; ``source_ip`` disagreeing with
    the metadata. Session enrichment is SQL NULL, ``{}`` or JSON ``null`` where no IP
    comes from it.
    """
    rng = random.Random(seed)
    for asn in ASNS:
        conn.execute(
            sa.text(_INSERT_ASN),
            {
                "asn": asn,
                "name": f"AS{asn}",
                "country": rng.choice(["CN", "US", None]),
                "first_seen": T0 - timedelta(days=400),
                "last_seen": T0,
                "enrichment": json.dumps({"asn": asn}),
            },
        )

    inventory: list[str] = []
    current: dict[str, tuple[int | None, datetime | None]] = {}
    special_ip_types = {5: ["DATACENTER", "VPN"], 20: ["RESIDENTIAL"], 41: [""]}
    ip_rows = []
    for n in range(INVENTORY_SIZE):
        ip = _inventory_ip(n)
        inventory.append(ip)
        current_asn = None if n % 7 == 3 else rng.choice(ASNS)
        updated = (
            None
            if n % 9 == 4
            else T0 + timedelta(days=rng.randrange(300), seconds=rng.randrange(86_400))
        )
        current[ip] = (current_asn, updated)
        ip_rows.append(
            {
                "ip": ip,
                "asn": current_asn,
                "verified": updated,
                "first_seen": T0 - timedelta(days=rng.randrange(1, 90)),
                "last_seen": T0 + timedelta(days=rng.randrange(90)),
                "session_count": rng.randrange(1, 50),
                "enrichment": json.dumps(_inventory_enrichment(n, rng)),
                "updated_at": updated,
                "ip_types": special_ip_types.get(n, []),
            }
        )
    conn.execute(sa.text(_INSERT_IP), ip_rows)

    kinds = (
        "meta",
        "meta_messy",
        "dshield_only",
        "meta_and_dshield",
        "events_only",
        "v16_source_ip",
        "loader_full",
        "loader_partial",
        "not_in_inventory",
        "no_ip",
        "meta_unusable",
        "source_ip_vs_meta",
    )
    # Session enrichment with no IP in it, as stored: SQL NULL, {}, JSON null, no number.
    empty_enrichments: tuple[str | None, ...] = (None, "{}", "null", '{"dshield": {}}')
    session_rows: list[dict[str, Any]] = []
    event_rows: list[dict[str, Any]] = []
    loader_written: list[str] = []
    used_ids: set[str] = set()
    offset = 0

    def event(session_id: str, payload: dict[str, Any], at: datetime | None) -> None:
        nonlocal offset
        offset += 1
        event_rows.append(
            {
                "source": "/var/log/cowrie/cowrie.json",
                "offset": offset,
                "payload": json.dumps(payload),
                "session_id": session_id,
                "event_type": payload.get("eventid"),
                "at": at,
            }
        )

    def connect(session_id: str, src_ip: Any, at: datetime | None) -> None:
        payload: dict[str, Any] = {"eventid": "cowrie.session.connect", "session": session_id}
        if src_ip is not None:
            payload["src_ip"] = src_ip
        event(session_id, payload, at)

    for n in range(sessions):
        sid = f"{rng.getrandbits(48):012x}"
        while sid in used_ids:
            sid = f"{rng.getrandbits(48):012x}"
        used_ids.add(sid)
        kind = kinds[n % len(kinds)]
        k = n // len(kinds)
        start = T0 + timedelta(minutes=rng.randrange(500_000))
        ip = rng.choice(inventory)
        other = rng.choice([x for x in inventory if x != ip])
        row: dict[str, Any] = {
            "session_id": sid,
            "first_event_at": start,
            "last_event_at": start + timedelta(seconds=rng.randrange(1, 600)),
            "event_count": rng.randrange(1, 40),
            "enrichment": None,
            "source_ip": None,
            "snapshot_asn": None,
            "snapshot_country": None,
            "snapshot_ip_type": None,
            "enrichment_at": None,
        }
        enrichment: Any = None  # a document to store as JSON (else row["enrichment"] as is)
        if kind == "meta":
            enrichment = {"session_metadata": {"source_ip": ip}}
            connect(sid, other, start)  # the metadata wins over the events
        elif kind == "meta_messy":
            enrichment = {"session_metadata": {"source_ip": _messy(ip, k)}}
        elif kind == "dshield_only":
            enrichment = {"dshield": {"ip": {"number": ip, "asname": "X"}}}
            connect(sid, other, start)
        elif kind == "meta_and_dshield":
            enrichment = {
                "session_metadata": {"source_ip": ip},
                "dshield": {"ip": {"number": other}},
            }
        elif kind == "events_only":
            row["enrichment"] = empty_enrichments[k % len(empty_enrichments)]
            decoy = rng.choice(inventory)
            connect(sid, other, None)  # lowest id, NULL timestamp: sorts last
            connect(sid, decoy, start + timedelta(seconds=10))
            event(sid, {"eventid": "cowrie.client.version", "session": sid}, start)
            if k % 2:
                connect(sid, 12345, start)  # a number is not an IP
            connect(sid, _messy(ip, k) if k % 3 == 0 else ip, start + timedelta(seconds=1))
            connect(sid, decoy, start + timedelta(seconds=1))  # same time, higher id
        elif kind == "v16_source_ip":
            enrichment = {"dshield": {"ip": {"number": ip}}}
            row["source_ip"] = ip
        elif kind in ("loader_full", "loader_partial"):
            enrichment = {"session_metadata": {"source_ip": ip}}
            asn_now, updated_now = current[ip]
            past = {
                "source_ip": ip,
                "snapshot_asn": rng.choice([a for a in ASNS if a != asn_now]),
                "snapshot_country": rng.choice(["BR", "IR", "VN"]),
                # the second is what upstream's real loader writes for a list (see oracle)
                "snapshot_ip_type": rng.choice(["MOBILE", '["DATACENTER", "VPN"]']),
                "enrichment_at": (updated_now or T0) - timedelta(days=30 + k),
            }
            if kind == "loader_full":
                keep = tuple(past)
            else:
                keep = (
                    ("source_ip", "snapshot_asn"),
                    ("source_ip", "snapshot_country", "enrichment_at"),
                    ("snapshot_country", "snapshot_ip_type"),
                )[k % 3]
            for column in keep:
                row[column] = past[column]
            loader_written.append(sid)
        elif kind == "not_in_inventory":
            stranger = _NOT_IN_INVENTORY[k % len(_NOT_IN_INVENTORY)]
            if k % 2:
                enrichment = {"session_metadata": {"source_ip": stranger}}
            else:
                row["enrichment"] = "{}"
                connect(sid, stranger, start)
        elif kind == "no_ip":
            row["enrichment"] = empty_enrichments[k % len(empty_enrichments)]
            if k % 2:
                connect(sid, None, start)
                connect(sid, "", start + timedelta(seconds=1))
                connect(sid, "   ", start + timedelta(seconds=2))
        elif kind == "meta_unusable":
            bad = ("", "   ", 3325256709, None, ["198.51.100.1"])[k % 5]
            enrichment = {"session_metadata": {"source_ip": bad}, "dshield": {"ip": {"number": ip}}}
            if k % 2:
                enrichment = {"session_metadata": {"source_ip": bad}}
                connect(sid, ip, start)
        elif kind == "source_ip_vs_meta":
            enrichment = {"session_metadata": {"source_ip": other}}
            row["source_ip"] = ip
        if enrichment is not None:
            row["enrichment"] = json.dumps(enrichment)
        session_rows.append(row)

    if session_rows:
        conn.execute(sa.text(_INSERT_SESSION), session_rows)
    if event_rows:
        conn.execute(sa.text(_INSERT_EVENT), event_rows)
    return FieldSeed(sessions=len(session_rows), loader_written=tuple(loader_written))


# --------------------------------------------------------------------------------------
# The loader
# --------------------------------------------------------------------------------------

# Shaped like upstream's BulkLoader._upsert_session_summaries() (PostgreSQL branch):
# one INSERT ... ON CONFLICT (session_id) DO UPDATE whose snapshot columns are
# COALESCE(existing, new) ("first ingestion wins"). The values follow the loader's
# intent; see loader_upsert() for where upstream's code really does otherwise.
_LOADER_UPSERT = """
WITH inv AS (
    SELECT i.ip_address,
           i.current_asn,
           upper(COALESCE(CAST(i.enrichment AS jsonb) -> 'maxmind' ->> 'country',
                          CAST(i.enrichment AS jsonb) -> 'cymru' ->> 'country',
                          CAST(i.enrichment AS jsonb) -> 'dshield' -> 'ip' ->> 'ascountry',
                          'XX')) AS country,
           CAST(i.enrichment AS jsonb) -> 'spur' -> 'client' -> 'types' AS types,
           i.enrichment_updated_at
    FROM ip_inventory AS i
    WHERE i.ip_address = :ip
)
INSERT INTO session_summaries AS s (
    session_id, first_event_at, last_event_at, event_count, enrichment,
    source_ip, snapshot_asn, snapshot_country, snapshot_ip_type, enrichment_at
)
VALUES (
    :session_id, now(), now(), 1, :enrichment,
    (SELECT ip_address FROM inv),
    (SELECT current_asn FROM inv),
    (SELECT CASE WHEN country ~ '^[A-Z]{2}$' AND country <> 'XX' THEN country END FROM inv),
    (SELECT CASE jsonb_typeof(types)
                WHEN 'string' THEN NULLIF(types #>> '{}', '')
                WHEN 'array' THEN (
                    SELECT t.value #>> '{}'
                    FROM jsonb_array_elements(types) WITH ORDINALITY AS t(value, n)
                    WHERE jsonb_typeof(t.value) = 'string' AND t.value #>> '{}' <> ''
                    ORDER BY array_position(
                                 ARRAY['VPN', 'TOR', 'PROXY', 'DATACENTER', 'RESIDENTIAL',
                                       'MOBILE'],
                                 t.value #>> '{}') NULLS LAST,
                             t.n
                    LIMIT 1)
            END
     FROM inv),
    (SELECT enrichment_updated_at FROM inv)
)
ON CONFLICT (session_id) DO UPDATE SET
    event_count = s.event_count + EXCLUDED.event_count,
    last_event_at = GREATEST(s.last_event_at, EXCLUDED.last_event_at),
    enrichment = COALESCE(EXCLUDED.enrichment, s.enrichment),
    source_ip = COALESCE(s.source_ip, EXCLUDED.source_ip),
    snapshot_asn = COALESCE(s.snapshot_asn, EXCLUDED.snapshot_asn),
    snapshot_country = COALESCE(s.snapshot_country, EXCLUDED.snapshot_country),
    snapshot_ip_type = COALESCE(s.snapshot_ip_type, EXCLUDED.snapshot_ip_type),
    enrichment_at = COALESCE(s.enrichment_at, EXCLUDED.enrichment_at),
    updated_at = now()
"""


def loader_upsert(conn: sa.Connection, session_id: str, ip: str) -> None:
    """Write one session the way upstream's loader does after v16 (PostgreSQL).

    Looks ``ip`` up in ``ip_inventory`` (exact match) and upserts the session with the
    five snapshot columns: ``source_ip`` only when the IP is there (foreign key),
    ``snapshot_asn`` = ``current_asn``, ``snapshot_country`` = the geo_country coalesce
    unless ``'XX'``, ``snapshot_ip_type`` from ``spur.client.types`` (a string as is; a
    list by the priority VPN, TOR, PROXY, DATACENTER, RESIDENTIAL, MOBILE, then list
    order), ``enrichment_at`` = ``enrichment_updated_at``. On conflict the existing
    snapshot values are kept (``COALESCE``). Fails if any snapshot column is missing.

    Two places where upstream's code (``BulkLoader._lookup_ip_snapshots``) does worse
    and this helper does not copy it, so that it can be pointed at any seeded IP:
    its country coalesce has no ``upper()`` (a lower-case or non-letter code breaks
    ``snapshot_country_iso`` and fails the batch; here it becomes NULL), and it reads
    the types with ``->>``, which turns a list into its JSON text, so the real loader
    writes e.g. ``'["RESIDENTIAL", "VPN"]'`` and its priority code never runs.
    """
    enrichment = json.dumps({"session_metadata": {"source_ip": ip}})
    conn.execute(
        sa.text(_LOADER_UPSERT), {"session_id": session_id, "ip": ip, "enrichment": enrichment}
    )
