"""The demo data generator: deterministic, true to its spec, and safe to point anywhere."""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command

from cowrieprocessor.db.engine import create_engine_from_url
from cowrieprocessor.db.models import SNAPSHOT_COLUMNS
from cowrieprocessor.demo import DemoDataError, DemoResult, DemoSpec, generate, sink
from cowrieprocessor.settings import PROJECT_ROOT
from cowrieprocessor.testing.databases import Databases
from cowrieprocessor.testing.runners import alembic_config
from cowrieprocessor.testing.seed import read

SPEC = DemoSpec(sessions=2_000, ips=400, seed=7)
TABLE_KEYS = {
    "asn_inventory": "asn_number",
    "ip_inventory": "ip_address",
    "session_summaries": "session_id",
    "raw_events": "id",
}
IP_TYPES = ("VPN", "TOR", "PROXY", "DATACENTER", "RESIDENTIAL", "MOBILE")


@pytest.fixture
def fresh_url(databases: Databases) -> Callable[[], str]:
    """Makes more empty databases on the dialect of ``db_url`` (dropped afterwards)."""
    return databases.new


def migrated(url: str, revision: str = "0002_snapshot_columns") -> sa.Engine:
    command.upgrade(alembic_config(url), revision)
    return create_engine_from_url(url)


def build(url: str, spec: DemoSpec = SPEC, **kwargs: Any) -> tuple[sa.Engine, DemoResult]:
    engine = migrated(url)
    return engine, generate(engine, spec, **kwargs)


def table_digest(engine: sa.Engine, table: str) -> str:
    """SHA-256 of every row of ``table`` as the driver returns it, in primary key order."""
    digest = hashlib.sha256()
    with engine.connect() as conn:
        result = conn.exec_driver_sql(f"SELECT * FROM {table} ORDER BY {TABLE_KEYS[table]}")
        for row in result:
            digest.update(repr(tuple(row)).encode())
    return digest.hexdigest()


def digests(engine: sa.Engine) -> dict[str, str]:
    return {table: table_digest(engine, table) for table in TABLE_KEYS}


def as_json(value: Any) -> Any:
    """A JSON column's value: parsed already on PostgreSQL, text on SQLite."""
    return json.loads(value) if isinstance(value, str) else value


def canonical_ips(engine: sa.Engine) -> dict[str, str | None]:
    """Each session's canonical IP, computed here independently of the generator:
    ``enrichment.session_metadata.source_ip``, else the ``src_ip`` of the earliest
    raw event (by event_timestamp, then id)."""
    earliest: dict[str, str] = {}
    with engine.connect() as conn:
        events = conn.execute(
            sa.text(
                "SELECT session_id, payload FROM raw_events "
                "ORDER BY session_id, event_timestamp, id"
            )
        )
        for sid, payload in events:
            earliest.setdefault(sid, as_json(payload)["src_ip"])
        found: dict[str, str | None] = {}
        for sid, enrichment in conn.execute(
            sa.text("SELECT session_id, enrichment FROM session_summaries")
        ):
            data = as_json(enrichment) or {}
            meta_ip = (data.get("session_metadata") or {}).get("source_ip")
            found[sid] = meta_ip or earliest.get(sid)
    return found


def inventory(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(sa.text("SELECT ip_address FROM ip_inventory")).scalars())


def count(engine: sa.Engine, sql: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(sql)).scalar_one())


# --- determinism ----------------------------------------------------------------------


def test_same_seed_gives_identical_rows_and_another_seed_does_not(
    fresh_url: Callable[[], str],
) -> None:
    first, _ = build(fresh_url())
    again, _ = build(fresh_url())
    other, _ = build(fresh_url(), DemoSpec(sessions=SPEC.sessions, ips=SPEC.ips, seed=8))
    try:
        reference = digests(first)
        assert digests(again) == reference
        different = digests(other)
        assert all(different[table] != reference[table] for table in TABLE_KEYS)
    finally:
        for engine in (first, again, other):
            engine.dispose()


def test_chunk_size_changes_no_value(fresh_url: Callable[[], str]) -> None:
    small, _ = build(fresh_url(), chunk_size=333)
    large, _ = build(fresh_url(), chunk_size=50_000)
    try:
        assert digests(small) == digests(large)
    finally:
        small.dispose()
        large.dispose()


def test_sessions_are_written_in_arrival_order_with_ids_in_no_order(sqlite_url: str) -> None:
    """As the field's tables: neighbouring rows arrived at neighbouring times and their
    random ids follow no order, so a range of ids is spread over many pages."""
    build(sqlite_url)[0].dispose()
    rows = read(
        sqlite_url,
        lambda conn: conn.execute(
            sa.text("SELECT session_id, created_at FROM session_summaries ORDER BY rowid")
        ).all(),
    )
    assert [r.created_at for r in rows] == sorted(r.created_at for r in rows)
    ascending = sum(a.session_id < b.session_id for a, b in pairwise(rows))
    assert 0.4 < ascending / (len(rows) - 1) < 0.6  # sorted by id: every pair ascends


def test_another_process_with_another_hash_seed_writes_the_same_bytes(tmp_path: Path) -> None:
    here, _ = build(f"sqlite:///{tmp_path / 'here.sqlite'}")
    there = tmp_path / "there.sqlite"
    script = (
        "import sys; from tests.test_demo_data import build, digests; "
        "engine, _ = build(sys.argv[1]); print(sorted(digests(engine).items()))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    env.pop("COWRIE_DB_URL", None)
    out = subprocess.run(
        [sys.executable, "-c", script, f"sqlite:///{there}"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    try:
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == str(sorted(digests(here).items()))
    finally:
        here.dispose()


# --- what is written ------------------------------------------------------------------


def test_counts_match_the_spec(db_url: str) -> None:
    engine, result = build(db_url)
    try:
        assert result.sessions == SPEC.sessions
        assert result.ips == SPEC.ips
        assert result.asns == 10  # max(10, round(400 / 40))
        assert result.unmatched_sessions == round(SPEC.sessions * SPEC.unmatched_fraction)
        assert result.raw_only_sessions == round(SPEC.sessions * SPEC.raw_only_fraction)
        assert count(engine, "SELECT count(*) FROM session_summaries") == SPEC.sessions
        assert count(engine, "SELECT count(DISTINCT session_id) FROM session_summaries") == (
            SPEC.sessions
        )
        assert count(engine, "SELECT count(*) FROM ip_inventory") == SPEC.ips
        assert count(engine, "SELECT count(*) FROM asn_inventory") == result.asns
        assert count(engine, "SELECT count(*) FROM raw_events") == result.raw_events
        # raw-only sessions have 1-4 events, about 5% of the others 1-3
        assert (
            result.raw_only_sessions
            <= result.raw_events
            <= 4 * result.raw_only_sessions + (3 * 0.1 * SPEC.sessions)
        )
        v6 = count(engine, "SELECT count(*) FROM ip_inventory WHERE ip_address LIKE '%:%'")
        assert 0.02 * SPEC.ips <= v6 <= 0.10 * SPEC.ips
        with engine.connect() as conn:
            ids = conn.execute(sa.text("SELECT session_id FROM session_summaries")).scalars()
            assert all(len(i) == 12 and int(i, 16) >= 0 and i == i.lower() for i in ids)
    finally:
        engine.dispose()


@pytest.mark.parametrize("fraction", [0.013, 0.25])
def test_unmatched_sessions_use_ips_that_are_not_in_the_inventory(
    db_url: str, fraction: float
) -> None:
    spec = DemoSpec(sessions=SPEC.sessions, ips=SPEC.ips, seed=3, unmatched_fraction=fraction)
    engine, result = build(db_url, spec)
    try:
        ips = canonical_ips(engine)
        known = inventory(engine)
        assert None not in ips.values()  # every session has a canonical IP
        unmatched = [sid for sid, ip in ips.items() if ip not in known]
        assert len(unmatched) == result.unmatched_sessions == round(spec.sessions * fraction)
        # every inventory IP has sessions, and its session_count says how many
        per_ip = Counter(ip for ip in ips.values() if ip in known)
        assert set(per_ip) == known
        with engine.connect() as conn:
            stored: dict[str, int] = dict(
                conn.execute(sa.text("SELECT ip_address, session_count FROM ip_inventory")).all()
            )
        assert stored == dict(per_ip)
    finally:
        engine.dispose()


def test_raw_only_sessions_are_known_only_through_their_earliest_event(db_url: str) -> None:
    engine, result = build(db_url)
    try:
        with engine.connect() as conn:
            sessions = {
                sid: (as_json(enrichment), first)
                for sid, enrichment, first in conn.execute(
                    sa.text("SELECT session_id, enrichment, first_event_at FROM session_summaries")
                )
            }
            events: dict[str, list[tuple[Any, int, dict[str, Any], str, str, str]]] = {}
            for row in conn.execute(
                sa.text(
                    "SELECT session_id, event_timestamp, id, payload, event_type, source, "
                    "payload_hash FROM raw_events"
                )
            ):
                sid, at, event_id, payload, kind, source, digest = row
                events.setdefault(sid, []).append(
                    (at, event_id, as_json(payload), kind, source, digest)
                )
        raw_only = [
            sid
            for sid, (enrichment, _first) in sessions.items()
            if not ((enrichment or {}).get("session_metadata") or {}).get("source_ip")
        ]
        assert len(raw_only) == result.raw_only_sessions == 40
        known = inventory(engine)
        matched = 0
        for sid in raw_only:
            mine = sorted(events[sid], key=lambda e: (e[0], e[1]))
            assert 1 <= len(mine) <= 4
            at, _id, payload, kind, source, _digest = mine[0]
            assert kind == payload["eventid"] == "cowrie.session.connect"
            assert at == sessions[sid][1]  # the connection opens the session
            assert payload["session"] == sid
            assert payload["src_ip"]
            assert {e[2]["src_ip"] for e in mine} == {payload["src_ip"]}
            assert source.startswith("/var/log/cowrie/cowrie.json.")
            matched += payload["src_ip"] in known
        assert matched >= len(raw_only) * 0.8  # most of them are in the inventory
        # the events of other sessions are there too, and every hash is the payload's
        assert len(events) > len(raw_only)
        if engine.dialect.name == "sqlite":
            with engine.connect() as conn:
                for text, digest in conn.execute(
                    sa.text("SELECT payload, payload_hash FROM raw_events")
                ):
                    assert hashlib.sha256(text.encode()).hexdigest() == digest
    finally:
        engine.dispose()


def test_snapshot_columns_stay_null(db_url: str) -> None:
    engine, _ = build(db_url)
    try:
        for column in SNAPSHOT_COLUMNS:
            assert count(
                engine, f"SELECT count(*) FROM session_summaries WHERE {column} IS NOT NULL"
            ) == 0, column  # fmt: skip
    finally:
        engine.dispose()


def test_inventory_looks_like_cowrieprocessors(db_url: str) -> None:
    engine, _ = build(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT ip_address, current_asn, geo_country, ip_types, enrichment, "
                    "session_count, first_seen, last_seen, enrichment_updated_at FROM ip_inventory"
                )
            ).all()
            asns: dict[int, str] = dict(
                conn.execute(
                    sa.text("SELECT asn_number, organization_country FROM asn_inventory")
                ).all()
            )
            cn_4134 = conn.execute(
                sa.text(
                    "SELECT count(*) FROM session_summaries s JOIN ip_inventory i "
                    "ON i.ip_address = " + canonical_sql(engine) + " "
                    "WHERE i.geo_country = 'CN' AND i.current_asn = 4134"
                )
            ).scalar_one()
        assert asns[4134] == "CN"
        assert cn_4134 > 0  # the runbook's query has something to find
        countries = Counter(row.geo_country for row in rows)
        assert countries.most_common(1)[0][0] in ("CN", "US")
        assert countries["XX"] >= 1  # no country in any source
        assert all(len(c) == 2 and c.isupper() for c in countries)
        sources = Counter(
            next((s for s in ("maxmind", "cymru", "dshield") if s in as_json(r.enrichment)), "-")
            for r in rows
        )
        assert sources["maxmind"] > 0.8 * len(rows) and sources["cymru"] and sources["dshield"]
        empty_types = 0
        for row in rows:
            types = as_json(row.ip_types) if isinstance(row.ip_types, str) else row.ip_types
            assert types == [t for t in IP_TYPES if t in types]  # priority order, no repeats
            empty_types += not types
            assert row.current_asn in asns
            assert row.first_seen <= row.last_seen
            assert row.session_count >= 1
        assert 0 < empty_types < len(rows)
        counts = sorted(row.session_count for row in rows)
        assert counts[-1] >= 10 * statistics.median(counts)  # a few very busy IPs
    finally:
        engine.dispose()


def canonical_sql(engine: sa.Engine) -> str:
    if engine.dialect.name == "postgresql":
        return "(s.enrichment -> 'session_metadata' ->> 'source_ip')"
    return "json_extract(s.enrichment, '$.session_metadata.source_ip')"


def test_json_is_valid_text_on_sqlite(sqlite_url: str) -> None:
    engine, _ = build(sqlite_url)
    try:
        for table, column in (
            ("asn_inventory", "enrichment"),
            ("ip_inventory", "enrichment"),
            ("ip_inventory", "ip_types"),
            ("session_summaries", "enrichment"),
            ("session_summaries", "source_files"),
            ("raw_events", "payload"),
        ):
            bad = count(
                engine,
                f"SELECT count(*) FROM {table} WHERE {column} IS NOT NULL "
                f"AND NOT json_valid({column})",
            )
            assert bad == 0, (table, column)
    finally:
        engine.dispose()


def test_the_backfill_matches_every_session_whose_ip_is_in_the_inventory(db_url: str) -> None:
    engine, result = build(db_url)
    try:
        command.upgrade(alembic_config(db_url), "head")
        matched = count(
            engine, "SELECT count(*) FROM session_summaries WHERE source_ip IS NOT NULL"
        )
        assert matched == result.sessions - result.unmatched_sessions
        cn = count(
            engine,
            "SELECT count(*) FROM session_summaries "
            "WHERE snapshot_country = 'CN' AND snapshot_asn = 4134",
        )
        assert cn > 0
    finally:
        engine.dispose()


def test_progress_is_reported_after_each_chunk(sqlite_url: str) -> None:
    calls: list[tuple[int, int]] = []
    engine, _ = build(sqlite_url, chunk_size=300, on_progress=lambda d, t: calls.append((d, t)))
    engine.dispose()
    assert len(calls) == math.ceil(SPEC.sessions / 300)
    assert [d for d, _ in calls] == sorted({d for d, _ in calls})
    assert calls[-1] == (SPEC.sessions, SPEC.sessions)


def test_a_failed_load_leaves_nothing_behind_on_postgresql(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The COPYs run on a thread of their own: a failure there still reaches the caller,
    and the one transaction of the run is rolled back."""
    engine = migrated(pg_url)
    real = sink.copy_text
    calls = 0

    def corrupt_the_fourth(rows: Any, columns: int) -> bytes:
        nonlocal calls
        calls += 1
        data = real(rows, columns)
        return data.replace(b"\t", b"\tone-column-too-many\t", 1) if calls == 4 else data

    monkeypatch.setattr(sink, "copy_text", corrupt_the_fourth)
    try:
        with pytest.raises(Exception, match="extra data after last expected column"):
            generate(engine, SPEC, chunk_size=500)
        assert calls >= 4
        for table in TABLE_KEYS:
            assert count(engine, f"SELECT count(*) FROM {table}") == 0, table
    finally:
        engine.dispose()


def test_works_on_a_database_at_head(sqlite_url: str) -> None:
    engine = migrated(sqlite_url, "head")
    try:
        result = generate(engine, DemoSpec(sessions=300, ips=50))
        assert result.sessions == count(engine, "SELECT count(*) FROM session_summaries") == 300
    finally:
        engine.dispose()


# --- refusals -------------------------------------------------------------------------


def test_a_database_with_sessions_is_refused_unless_forced(db_url: str) -> None:
    small = DemoSpec(sessions=500, ips=100, seed=5)
    engine, first = build(db_url, small)
    try:
        before = digests(engine)
        with pytest.raises(DemoDataError, match=r"already holds 500 rows"):
            generate(engine, small)
        assert digests(engine) == before  # nothing written

        # the same seed again, with force: every colliding key is skipped
        second = generate(engine, small, force=True)
        assert (second.sessions, second.ips) == (500, 100)
        assert second.asns == 0  # all ten ASNs exist already and are reused
        assert count(engine, "SELECT count(*) FROM session_summaries") == 1_000
        assert count(engine, "SELECT count(DISTINCT session_id) FROM session_summaries") == 1_000
        assert count(engine, "SELECT count(*) FROM ip_inventory") == 200
        assert count(engine, "SELECT count(*) FROM asn_inventory") == first.asns
        # the new unmatched sessions still miss the (now larger) inventory
        known = inventory(engine)
        missing = sum(ip not in known for ip in canonical_ips(engine).values())
        assert missing == first.unmatched_sessions + second.unmatched_sessions
    finally:
        engine.dispose()


@pytest.mark.parametrize("revision", [None, "0001_baseline"])
def test_a_database_below_0002_is_refused(db_url: str, revision: str | None) -> None:
    if revision is not None:
        command.upgrade(alembic_config(db_url), revision)
    engine = create_engine_from_url(db_url)
    try:
        with pytest.raises(DemoDataError, match="0002_snapshot_columns"):
            generate(engine, SPEC)
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "spec",
    [
        DemoSpec(sessions=-1, ips=10),
        DemoSpec(sessions=10, ips=0),
        DemoSpec(sessions=10, ips=10, unmatched_fraction=1.5),
        DemoSpec(sessions=10, ips=10, ipv6_fraction=-0.1),
        DemoSpec(sessions=10, ips=10, raw_only_fraction=float("nan")),
        DemoSpec(sessions=10, ips=10, asns=-3),
    ],
)
def test_an_invalid_spec_is_refused_before_anything_is_written(
    sqlite_url: str, spec: DemoSpec
) -> None:
    engine = migrated(sqlite_url)
    try:
        with pytest.raises(DemoDataError, match="invalid demo data spec"):
            generate(engine, spec)
        assert count(engine, "SELECT count(*) FROM asn_inventory") == 0
    finally:
        engine.dispose()


def test_nothing_to_do_is_fine(sqlite_url: str) -> None:
    engine = migrated(sqlite_url)
    try:
        result = generate(engine, DemoSpec(sessions=0, ips=0))
        assert (result.sessions, result.ips, result.asns, result.raw_events) == (0, 0, 0, 0)
        inventory_only = generate(engine, DemoSpec(sessions=0, ips=30))
        assert inventory_only.ips == count(engine, "SELECT count(*) FROM ip_inventory") == 30
    finally:
        engine.dispose()
