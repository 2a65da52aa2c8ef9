"""The upstream approach, re-implemented here to be measured against the product.

Upstream's ``scripts/migrations/backfill_session_snapshots.py`` (cowrieprocessor, ADR-007)
works like this, and so does :func:`run`:

1. select ``batch_size`` (1,000) sessions that still lack a snapshot, with ``LIMIT`` and
   no key order or position: every batch scans the table again from its start;
2. take each session's canonical IP in Python from ``enrichment.session_metadata``;
3. look the batch's IPs up in ``ip_inventory`` with one query;
4. one ``UPDATE ... WHERE session_id = :id`` per session, one round trip each;
5. commit once per batch.

Differences, all chosen so that it ends with exactly the product's data and so that
none of them makes it slower than upstream:

* upstream writes a sentinel (``'XX'``) into sessions it cannot match, so that its
  ``LIMIT`` query stops selecting them; we refuse to write fake data, so unmatched
  sessions go into a temporary table that the select excludes (``NOT EXISTS``);
* upstream knows the IP only from the enrichment JSON; sessions without it get theirs
  from ``raw_events`` here (one extra query per batch, for the ~2% that need it), so
  that both runs fill the same sessions;
* each UPDATE fills only NULL columns (``COALESCE``), the product's rule;
* statements are SQLAlchemy Core text, cheaper than upstream's ORM session.

Run on its own: ``python -m benchmarks.upstream URL [--batch-size N]``; it prints one
JSON line with its wall time, batches and the seconds to the first commit.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from cowrieprocessor.db.engine import create_engine_from_url

BATCH_SIZE = 1000

SKIP_TABLE = "CREATE TEMP TABLE upstream_skip (session_id VARCHAR(64) PRIMARY KEY)"
SELECT_MISSING = sa.text(
    "SELECT s.session_id, s.source_ip, s.enrichment FROM session_summaries s "
    "WHERE s.source_ip IS NULL "
    "AND NOT EXISTS (SELECT 1 FROM upstream_skip k WHERE k.session_id = s.session_id) "
    "LIMIT :n"
)
SKIP = sa.text("INSERT INTO upstream_skip (session_id) VALUES (:sid)")
RAW_IPS = sa.text(
    "SELECT session_id, payload, event_timestamp, id FROM raw_events WHERE session_id IN :ids"
).bindparams(sa.bindparam("ids", expanding=True))
LOOKUP = sa.text(
    "SELECT ip_address, current_asn, geo_country, ip_types, enrichment_updated_at "
    "FROM ip_inventory WHERE ip_address IN :ips"
).bindparams(sa.bindparam("ips", expanding=True))
UPDATE_ONE = sa.text(
    "UPDATE session_summaries SET "
    "source_ip = COALESCE(source_ip, :ip), "
    "snapshot_asn = COALESCE(snapshot_asn, :asn), "
    "snapshot_country = COALESCE(snapshot_country, :country), "
    "snapshot_ip_type = COALESCE(snapshot_ip_type, :ip_type), "
    "enrichment_at = COALESCE(enrichment_at, :enrichment_at) "
    "WHERE session_id = :sid"
)


@dataclass
class UpstreamResult:
    seconds: float
    batches: int
    updated: int
    skipped: int
    first_commit_seconds: float | None
    batch_seconds: list[float] = field(default_factory=list)


def _as_json(value: Any) -> Any:
    """SQLite hands JSON columns back as text when read through ``text()``."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def _clean_ip(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip().lower()
    return None


def canonical_ip(source_ip: Any, enrichment: Any) -> str | None:
    """Upstream's ``extract_canonical_ip``, with the product's trimming rules."""
    if isinstance(source_ip, str) and source_ip:
        return source_ip
    data = _as_json(enrichment)
    if not isinstance(data, dict):
        return None
    meta = data.get("session_metadata")
    if not isinstance(meta, dict):
        return None
    return _clean_ip(meta.get("source_ip"))


def _earliest_event_ips(conn: Connection, ids: list[str]) -> dict[str, str]:
    """Each session's ``src_ip`` from its earliest event (timestamp, NULL last, then id)."""
    best: dict[str, tuple[tuple[Any, ...], str]] = {}
    for sid, payload, stamp, row_id in conn.execute(RAW_IPS, {"ids": ids}):
        data = _as_json(payload)
        ip = _clean_ip(data.get("src_ip")) if isinstance(data, dict) else None
        if ip is None:
            continue
        key = (0, stamp, int(row_id)) if stamp is not None else (1, int(row_id))
        if sid not in best or key < best[sid][0]:
            best[sid] = (key, ip)
    return {sid: ip for sid, (_key, ip) in best.items()}


def _country(value: Any) -> str | None:
    if isinstance(value, str) and len(value) == 2 and value.isascii() and value.isupper():
        return None if value == "XX" else value
    return None


def _ip_type(value: Any) -> str | None:
    types = _as_json(value)
    if isinstance(types, list) and types and isinstance(types[0], str) and types[0]:
        return types[0]
    return None


def run(url: str, batch_size: int = BATCH_SIZE) -> UpstreamResult:
    engine = create_engine_from_url(url, application_name="cowrie-bench-upstream")
    started = time.monotonic()
    result = UpstreamResult(0.0, 0, 0, 0, None)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(SKIP_TABLE))
            conn.commit()
            while True:
                batch_started = time.monotonic()
                rows = conn.execute(SELECT_MISSING, {"n": batch_size}).all()
                if not rows:
                    conn.commit()
                    break
                ips: dict[str, str | None] = {
                    str(r.session_id): canonical_ip(r.source_ip, r.enrichment) for r in rows
                }
                missing = [sid for sid, ip in ips.items() if ip is None]
                if missing:
                    ips.update(_earliest_event_ips(conn, missing))
                wanted = sorted({ip for ip in ips.values() if ip is not None})
                inventory = (
                    {str(r.ip_address): r for r in conn.execute(LOOKUP, {"ips": wanted})}
                    if wanted
                    else {}
                )
                for sid, ip in ips.items():
                    row = inventory.get(ip) if ip is not None else None
                    if row is None:
                        conn.execute(SKIP, {"sid": sid})
                        result.skipped += 1
                        continue
                    conn.execute(
                        UPDATE_ONE,
                        {
                            "sid": sid,
                            "ip": row.ip_address,
                            "asn": row.current_asn,
                            "country": _country(row.geo_country),
                            "ip_type": _ip_type(row.ip_types),
                            "enrichment_at": row.enrichment_updated_at,
                        },
                    )
                    result.updated += 1
                conn.commit()
                result.batches += 1
                now = time.monotonic()
                result.batch_seconds.append(now - batch_started)
                if result.first_commit_seconds is None:
                    result.first_commit_seconds = now - started
    finally:
        engine.dispose()
    result.seconds = time.monotonic() - started
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    args = parser.parse_args(argv)
    result = run(args.url, args.batch_size)
    print(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
