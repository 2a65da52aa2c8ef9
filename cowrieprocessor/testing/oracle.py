"""What the snapshot backfill should leave behind, worked out in plain Python.

An independent statement of the mapping rules, for tests to hold the SQL against:
``current_snapshots(conn_after) == expected_snapshots(conn_before)``. It reads the rows
with simple SELECTs and decides everything here, so a mistake in the backfill's SQL
does not repeat itself in the expectation.

Rules, per session:

- canonical IP: the existing ``source_ip``; else ``enrichment.session_metadata.source_ip``;
  else ``enrichment.dshield.ip.number``; else the ``src_ip`` of the session's earliest
  raw event that has one (``event_timestamp`` ascending, NULL last, then ``id``). A
  candidate counts only if it is a JSON string; it is trimmed of spaces (as SQL
  ``trim()`` does) and lower-cased; empty means absent. Malformed JSON gives nothing.
- matched: the canonical IP is an ``ip_inventory.ip_address``. Unmatched sessions keep
  what they have.
- a matched session's NULL columns get: ``source_ip`` = the IP; ``snapshot_asn`` =
  ``current_asn``; ``snapshot_country`` = ``geo_country`` when it is two letters A-Z
  other than ``XX``; ``snapshot_ip_type`` = the first element of ``ip_types`` when that
  is a non-empty string, else from ``enrichment.spur.client.types`` (a non-empty string
  as is; in a list, the first non-empty string by the priority VPN, TOR, PROXY,
  DATACENTER, RESIDENTIAL, MOBILE, then the rest in list order); ``enrichment_at`` =
  ``enrichment_updated_at``. A column that has a value keeps it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from cowrieprocessor.db.models import SNAPSHOT_COLUMNS

Snapshot = tuple[Any, Any, Any, Any, Any]
TYPE_PRIORITY = ("VPN", "TOR", "PROXY", "DATACENTER", "RESIDENTIAL", "MOBILE")
_COUNTRY = re.compile(r"[A-Z]{2}")

# Typed where the value is compared (so SQLite's text timestamps come back as datetimes),
# untyped where it is only parsed or ordered the way the database orders it.
_COLUMN_TYPES: dict[str, sa.types.TypeEngine[Any]] = {
    "source_ip": sa.String(),
    "snapshot_asn": sa.Integer(),
    "snapshot_country": sa.String(),
    "snapshot_ip_type": sa.String(),
    "enrichment_at": sa.DateTime(timezone=True),
    "current_asn": sa.Integer(),
    "geo_country": sa.String(),
    "enrichment_updated_at": sa.DateTime(timezone=True),
}


def normalize(value: Any) -> Any:
    """Timestamps as aware UTC ISO strings (naive ones are taken as UTC); others as is."""
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return aware.astimezone(UTC).isoformat()
    return value


def current_snapshots(conn: sa.Connection) -> dict[str, Snapshot]:
    """session_id -> the five snapshot columns as they are now (missing columns: None)."""
    return {sid: snap for sid, (snap, _enrichment) in _sessions(conn).items()}


def expected_snapshots(conn: sa.Connection) -> dict[str, Snapshot]:
    """session_id -> the five snapshot columns a correct backfill leaves, from the rows now."""
    sessions = _sessions(conn)
    first_event_ip = _first_event_ips(conn)
    inventory = _inventory(conn)
    expected: dict[str, Snapshot] = {}
    for sid, (snapshot, enrichment) in sessions.items():
        ip = snapshot[0]
        if ip is None:
            ip = _first_present(
                _json_path(enrichment, "session_metadata", "source_ip"),
                _json_path(enrichment, "dshield", "ip", "number"),
                first_event_ip.get(sid),
            )
        found = inventory.get(ip) if isinstance(ip, str) else None
        if found is None:
            expected[sid] = snapshot
            continue
        expected[sid] = _fill_nulls(snapshot, found)
    return expected


def _fill_nulls(old: Snapshot, new: Snapshot) -> Snapshot:
    """A column that has a value keeps it; a NULL one takes the inventory's."""
    a, b, c, d, e = (o if o is not None else n for o, n in zip(old, new, strict=True))
    return (a, b, c, d, e)


# --- reading ------------------------------------------------------------------------


def _columns(conn: sa.Connection, table: str) -> set[str] | None:
    inspector = sa.inspect(conn)
    if not inspector.has_table(table):
        return None
    return {c["name"] for c in inspector.get_columns(table)}


def _as_text(name: str) -> sa.ColumnElement[Any]:
    """A JSON column read as its text: one parser (json.loads) for every dialect and driver."""
    return sa.cast(sa.column(name), sa.Text())


def _sessions(conn: sa.Connection) -> dict[str, tuple[Snapshot, Any]]:
    present = _columns(conn, "session_summaries")
    if present is None:
        return {}
    columns: list[sa.ColumnElement[Any]] = [sa.column("session_id", sa.String())]
    columns += [
        sa.column(c, _COLUMN_TYPES[c]) if c in present else sa.null() for c in SNAPSHOT_COLUMNS
    ]
    columns.append(_as_text("enrichment") if "enrichment" in present else sa.null())
    query = sa.select(*columns).select_from(sa.table("session_summaries"))
    out: dict[str, tuple[Snapshot, Any]] = {}
    for row in conn.execute(query):
        snapshot: Snapshot = (
            row[1],
            row[2],
            row[3],
            row[4],
            normalize(row[5]),
        )
        out[row[0]] = (snapshot, _parse(row[6]))
    return out


def _first_event_ips(conn: sa.Connection) -> dict[str, str]:
    """session_id -> normalised src_ip of its earliest raw event that has a usable one."""
    if _columns(conn, "raw_events") is None:
        return {}
    query = sa.select(
        sa.column("session_id"),
        sa.column("id"),
        sa.column("event_timestamp"),  # untyped: ordered as the database stores it
        _as_text("payload"),
    ).select_from(sa.table("raw_events"))
    events: dict[str, list[tuple[Any, int, str]]] = {}
    for session_id, event_id, at, payload in conn.execute(query):
        if session_id is None:
            continue
        ip = _clean_ip(_json_path(_parse(payload), "src_ip"))
        if ip is not None:
            events.setdefault(session_id, []).append((at, event_id, ip))
    return {
        sid: min(rows, key=lambda r: (r[0] is None, r[0] if r[0] is not None else 0, r[1]))[2]
        for sid, rows in events.items()
    }


def _inventory(conn: sa.Connection) -> dict[str, Snapshot]:
    """ip_address -> the five values a matched session takes from it."""
    present = _columns(conn, "ip_inventory")
    if present is None:
        return {}
    query = sa.select(
        sa.column("ip_address", sa.String()),
        *(
            sa.column(c, _COLUMN_TYPES[c]) if c in present else sa.null()
            for c in ("current_asn", "geo_country", "enrichment_updated_at")
        ),
        sa.column("ip_types") if "ip_types" in present else sa.null(),
        _as_text("enrichment"),
    ).select_from(sa.table("ip_inventory"))
    out: dict[str, Snapshot] = {}
    for ip, asn, geo, updated, ip_types, raw_enrichment in conn.execute(query):
        enrichment = _parse(raw_enrichment)
        if "geo_country" not in present:
            geo = _geo_country(enrichment)
        country = geo if isinstance(geo, str) and _COUNTRY.fullmatch(geo) and geo != "XX" else None
        out[ip] = (ip, asn, country, _ip_type(ip_types, enrichment), normalize(updated))
    return out


# --- rules --------------------------------------------------------------------------


def _parse(raw: Any) -> Any:
    """JSON text -> Python; malformed or absent -> None."""
    if raw is None:
        return None
    if not isinstance(raw, str):
        return raw  # a driver that already decoded it
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _json_path(document: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(document, dict):
            return None
        document = document.get(key)
    return document


def _clean_ip(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    value = value.strip(" ").lower()
    return value or None


def _first_present(*candidates: Any) -> str | None:
    for candidate in candidates:
        ip = _clean_ip(candidate)
        if ip is not None:
            return ip
    return None


def _geo_country(enrichment: Any) -> str:
    """Upstream's generated column, for an ip_inventory that lacks it (upstream's SQLite)."""
    for path in (("maxmind", "country"), ("cymru", "country"), ("dshield", "ip", "ascountry")):
        value = _json_path(enrichment, *path)
        if value is not None:
            text = value if isinstance(value, str) else json.dumps(value)
            return text.upper()
    return "XX"


def _ip_type(ip_types: Any, enrichment: Any) -> str | None:
    if isinstance(ip_types, str):  # SQLite keeps the array as JSON text
        ip_types = _parse(ip_types)
    if isinstance(ip_types, list) and ip_types and isinstance(ip_types[0], str) and ip_types[0]:
        return ip_types[0]
    types = _json_path(enrichment, "spur", "client", "types")
    if isinstance(types, str):
        return types or None
    if isinstance(types, list):
        return _by_priority(t for t in types if isinstance(t, str) and t)
    return None


def _by_priority(types: Iterable[str]) -> str | None:
    ranked = [
        (TYPE_PRIORITY.index(t) if t in TYPE_PRIORITY else len(TYPE_PRIORITY), n, t)
        for n, t in enumerate(types)
    ]
    return min(ranked)[2] if ranked else None
