"""Small, explicit test data, inserted with SQLAlchemy Core (no ORM sessions), and what
the tests read back: the five snapshot columns of every session, the revision."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast

import sqlalchemy as sa
from alembic import command

from cowrieprocessor.db.engine import create_engine_from_url
from cowrieprocessor.db.models import (
    SNAPSHOT_COLUMNS,
    ASNInventory,
    IPInventory,
    RawEvent,
    SessionSummary,
)
from cowrieprocessor.testing.databases import copy_migrated
from cowrieprocessor.testing.partitioned import partition_tables
from cowrieprocessor.testing.runners import alembic_config

T = TypeVar("T")
T0 = datetime(2025, 1, 1, tzinfo=UTC)
# 0004's covering index: the one snapshot index with more than one key column.


asn_t = cast(sa.Table, ASNInventory.__table__)
ip_t = cast(sa.Table, IPInventory.__table__)
sess_t = cast(sa.Table, SessionSummary.__table__)
ev_t = cast(sa.Table, RawEvent.__table__)


def read(url: str, what: Callable[[sa.Connection], T]) -> T:
    """``what`` of a connection to ``url`` (an engine of its own, disposed after)."""
    engine = create_engine_from_url(url)
    try:
        with engine.connect() as conn:
            return what(conn)
    finally:
        engine.dispose()


def migrate(url: str, target: str) -> None:
    """Upgrade ``url`` to ``target``; an untouched database becomes a copy of one migrated
    there once (:func:`cowrieprocessor.testing.databases.copy_migrated`): the same result,
    faster."""

    def upgrade(to_url: str) -> None:
        command.upgrade(alembic_config(to_url), target)

    if not copy_migrated(url, target, upgrade):
        upgrade(url)


def at_0002(url: str) -> sa.Engine:
    """Migrate ``url`` to 0002 (columns present, no backfill) and return an engine."""
    migrate(url, "0002_snapshot_columns")
    return create_engine_from_url(url)


def random_at_0002(url: str, sessions: int, ips: int, seed: int) -> None:
    """Migrate ``url`` to 0002 and fill it with :func:`seed_random`'s data."""
    engine = at_0002(url)
    try:
        with engine.begin() as conn:
            seed_random(conn, sessions, ips, seed=seed)
    finally:
        engine.dispose()


def partitioned_at_0002(url: str, kind: str) -> sa.Engine:
    """:func:`at_0002` on a database whose session_summaries (hash or monthly range) and
    raw_events (hash) were partitioned before the deploy, at 0001."""
    migrate(url, "0001_baseline")
    engine = create_engine_from_url(url)
    with engine.begin() as conn:
        partition_tables(conn, kind)
    migrate(url, "0002_snapshot_columns")
    return engine


def add_asn(conn: sa.Connection, asn: int, name: str = "AS", country: str = "CN") -> None:
    conn.execute(
        sa.insert(asn_t).values(
            asn_number=asn,
            organization_name=name,
            organization_country=country,
            first_seen=T0,
            last_seen=T0,
        )
    )


def add_ip(
    conn: sa.Connection,
    ip: str,
    *,
    asn: int | None = 4134,
    country: Any = "CN",
    ip_types: list[str] | None = None,
    updated_at: datetime | None = T0,
    enrichment: Any = None,
) -> None:
    if enrichment is None:
        enrichment = {} if country is None else {"maxmind": {"country": country}}
    conn.execute(
        sa.insert(ip_t).values(
            ip_address=ip,
            current_asn=asn,
            first_seen=T0,
            last_seen=T0,
            enrichment=enrichment,
            enrichment_updated_at=updated_at,
            ip_types=ip_types if ip_types is not None else ["DATACENTER"],
        )
    )


def add_session(
    conn: sa.Connection,
    session_id: str,
    *,
    meta_ip: Any = None,
    enrichment: Any = None,
    **snapshot: Any,
) -> None:
    if enrichment is None and meta_ip is not None:
        enrichment = {"session_metadata": {"source_ip": meta_ip}}
    conn.execute(
        sa.insert(sess_t).values(
            session_id=session_id, first_event_at=T0, enrichment=enrichment, **snapshot
        )
    )


def add_event(
    conn: sa.Connection,
    session_id: str,
    src_ip: Any,
    *,
    at: datetime | None = T0,
    event_id: int | None = None,
    payload: Any = None,
) -> None:
    if payload is None:
        payload = {"eventid": "cowrie.session.connect", "session": session_id}
        if src_ip is not None:
            payload["src_ip"] = src_ip
    values: dict[str, Any] = dict(
        source="/var/log/cowrie/cowrie.json",
        payload=payload,
        session_id=session_id,
        event_type="cowrie.session.connect",
        event_timestamp=at,
    )
    if event_id is not None:
        values["id"] = event_id
    conn.execute(sa.insert(ev_t).values(**values))


def snapshots(engine: sa.Engine) -> dict[str, tuple[Any, ...]]:
    """session_id -> the five snapshot columns, for comparing whole tables."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(sess_t.c.session_id, *(sess_t.c[c] for c in SNAPSHOT_COLUMNS)).order_by(
                sess_t.c.session_id
            )
        ).all()
    return {r[0]: tuple(_norm(v) for v in r[1:]) for r in rows}


def version(engine: sa.Engine) -> str:
    """The revision that ``alembic_version`` names."""
    with engine.connect() as conn:
        return str(conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar())


def _norm(value: Any) -> Any:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    return value


def seed_random(
    conn: sa.Connection, sessions: int, ips: int, seed: int = 7, spread_days: int = 0
) -> None:
    """The suite's one seeder of our schema: a deterministic mix of metadata IPs (some
    padded and upper-case), sessions known only from raw events (the earliest event
    carries the IP), IPs not in the inventory, IPv6; inserted in bulk (tens of thousands
    of rows in a second or two). ``spread_days``: the sessions start over that many days
    from T0 (for monthly partitions), else all at T0."""
    rng = random.Random(seed)
    asns = (4134, 4837, 14061, 16509)
    conn.execute(
        sa.insert(asn_t),
        [
            dict(
                asn_number=a,
                organization_name="AS",
                organization_country="CN",
                first_seen=T0,
                last_seen=T0,
            )
            for a in asns
        ],
    )
    countries = ["CN", "US", "RU", "BR", "XX", "de", None]
    inventory: list[str] = []
    ip_rows: list[dict[str, Any]] = []
    for n in range(ips):
        ip = f"10.{n // 65536}.{(n // 256) % 256}.{n % 256}" if n % 10 else f"2001:db8::{n:x}"
        inventory.append(ip)
        asn = rng.choice([*asns, None])
        country = rng.choice(countries)
        ip_types = rng.choice([["VPN", "DATACENTER"], ["RESIDENTIAL"], []])
        updated_at = T0 + timedelta(days=rng.randrange(300))
        ip_rows.append(
            dict(
                ip_address=ip,
                current_asn=asn,
                first_seen=T0,
                last_seen=T0,
                enrichment={} if country is None else {"maxmind": {"country": country}},
                enrichment_updated_at=updated_at,
                ip_types=ip_types,
            )
        )
    if ip_rows:
        conn.execute(sa.insert(ip_t), ip_rows)
    session_rows: list[dict[str, Any]] = []
    event_rows: list[dict[str, Any]] = []
    for n in range(sessions):
        sid = f"{rng.getrandbits(48):012x}"
        roll = rng.random()
        ip = rng.choice(inventory) if roll > 0.02 else f"192.0.2.{n % 250}"
        if roll < 0.9:
            meta = f" {ip.upper()} " if n % 7 == 0 else ip
            enrichment: Any = {"session_metadata": {"source_ip": meta}}
        else:  # known only from raw events: the earliest one carries the canonical IP
            enrichment = {"session_metadata": {}}
            for offset, event_ip in ((0, ip), (5, "203.0.113.9")):
                event_rows.append(
                    dict(
                        source="/var/log/cowrie/cowrie.json",
                        payload={
                            "eventid": "cowrie.session.connect",
                            "session": sid,
                            "src_ip": event_ip,
                        },
                        session_id=sid,
                        event_type="cowrie.session.connect",
                        event_timestamp=T0 + timedelta(seconds=n + offset),
                    )
                )
        start = T0 + timedelta(days=n % spread_days) if spread_days else T0
        session_rows.append(dict(session_id=sid, first_event_at=start, enrichment=enrichment))
    for chunk in range(0, len(session_rows), 5000):
        conn.execute(sa.insert(sess_t), session_rows[chunk : chunk + 5000])
    for chunk in range(0, len(event_rows), 5000):
        conn.execute(sa.insert(ev_t), event_rows[chunk : chunk + 5000])


def json_dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
