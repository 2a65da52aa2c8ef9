"""The field-database fixture (cowrieprocessor.testing) builds what it claims, and the
oracle gives the values worked out by hand."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from cowrieprocessor.db.engine import create_engine_from_url
from cowrieprocessor.testing.field_schema import (
    SCHEMA_VERSION,
    build_postgres,
    build_sqlite,
    loader_upsert,
    seed_postgres,
)
from cowrieprocessor.testing.oracle import current_snapshots, expected_snapshots

T0 = datetime(2025, 1, 1, tzinfo=UTC)
SNAPSHOT_INDEXES = {
    "idx_session_source_ip",
    "idx_session_snapshot_asn",
    "idx_session_snapshot_country",
}
IX_FAMILY = {
    "ix_session_summaries_source_ip",
    "ix_session_summaries_snapshot_asn",
    "ix_session_summaries_snapshot_country",
    "ix_session_summaries_snapshot_ip_type",
}


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[sa.Engine]:
    engine = create_engine_from_url(pg_url)
    try:
        yield engine
    finally:
        engine.dispose()


def _scalar(conn: sa.Connection, sql: str, **params: object) -> object:
    return conn.execute(sa.text(sql), params).scalar()


def _add_ip(conn: sa.Connection, ip: str, enrichment: object, **extra: object) -> None:
    conn.execute(
        sa.text(
            "INSERT INTO ip_inventory (ip_address, current_asn, first_seen, last_seen, enrichment,"
            " enrichment_updated_at, ip_types)"
            " VALUES (:ip, :asn, :t, :t, CAST(:e AS jsonb), :t, CAST(:types AS text[]))"
        ),
        {"ip": ip, "e": json.dumps(enrichment), "t": T0, "asn": None, "types": [], **extra},
    )


def _add_session(conn: sa.Connection, sid: str, enrichment: object) -> None:
    conn.execute(
        sa.text(
            "INSERT INTO session_summaries (session_id, enrichment) VALUES (:s, CAST(:e AS json))"
        ),
        {"s": sid, "e": json.dumps(enrichment)},
    )


@pytest.mark.postgres
def test_build_postgres_has_upstreams_catalog(pg_engine: sa.Engine) -> None:
    with pg_engine.begin() as conn:
        build_postgres(conn)
    with pg_engine.connect() as conn:
        types: dict[str, str] = dict(
            conn.execute(
                sa.text(
                    "SELECT table_name || '.' || column_name, data_type"
                    " FROM information_schema.columns WHERE table_schema = 'public'"
                )
            ).all()
        )
        assert types["session_summaries.enrichment"] == "json"
        assert types["session_summaries.source_files"] == "json"
        assert types["raw_events.payload"] == "json"
        assert types["ip_inventory.enrichment"] == "jsonb"
        assert types["asn_inventory.enrichment"] == "json"
        assert types["ip_inventory.ip_types"] == "ARRAY"
        assert types["session_summaries.snapshot_ip_type"] == "text"
        assert types["session_summaries.enrichment_at"] == "timestamp with time zone"
        generated = set(
            conn.execute(
                sa.text(
                    "SELECT column_name FROM information_schema.columns"
                    " WHERE table_name = 'ip_inventory' AND is_generated = 'ALWAYS'"
                )
            ).scalars()
        )
        assert generated == {"geo_country", "is_scanner", "is_bogon"}
        constraints: dict[str, bool] = dict(
            conn.execute(
                sa.text(
                    "SELECT conname, convalidated FROM pg_constraint"
                    " WHERE conrelid IN ('session_summaries'::regclass, 'ip_inventory'::regclass,"
                    " 'raw_events'::regclass)"
                )
            ).all()
        )
        assert constraints["snapshot_country_iso"] is True
        assert constraints["fk_session_source_ip"] is True
        assert constraints["fk_ip_current_asn"] is True
        assert {"pk_session_summaries", "ip_inventory_pkey", "pk_raw_events"} <= set(constraints)
        indexes = set(
            conn.execute(sa.text("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'"))
            .scalars()
            .all()
        )
        assert indexes >= SNAPSHOT_INDEXES | IX_FAMILY
        assert {
            "ix_raw_events_session_id",
            "ix_session_summaries_first_event",
            "idx_session_first_event_brin",
            "idx_session_last_event_brin",
        } <= indexes
        assert _scalar(conn, "SELECT value FROM schema_state WHERE key = 'schema_version'") == str(
            SCHEMA_VERSION
        )
        assert not sa.inspect(conn).has_table("alembic_version")


@pytest.mark.postgres
def test_build_postgres_upgraded_and_legacy_variants(pg_engine: sa.Engine) -> None:
    with pg_engine.begin() as conn:
        build_postgres(conn, index_families="idx", legacy_ip_types_column=True)
    inspector = sa.inspect(pg_engine)
    columns = {c["name"]: c for c in inspector.get_columns("session_summaries")}
    assert "snapshot_ip_type" not in columns
    assert "snapshot_ip_types" in columns
    indexes = {i["name"] for i in inspector.get_indexes("session_summaries")}
    assert indexes >= SNAPSHOT_INDEXES
    assert not (IX_FAMILY & indexes)
    with pytest.raises(ValueError, match="index_families"), pg_engine.begin() as conn:
        build_postgres(conn, index_families="ix")


@pytest.mark.postgres
def test_seed_and_loader_upsert_on_the_field_database(pg_engine: sa.Engine) -> None:
    with pg_engine.begin() as conn:
        build_postgres(conn)
        seeded = seed_postgres(conn, sessions=120)
        _add_ip(
            conn,
            "192.0.2.1",
            {"maxmind": {"country": "xx"}, "spur": {"client": {"types": ["RESIDENTIAL", "VPN"]}}},
            asn=None,
        )
    assert seeded.sessions == 120
    assert len(seeded.loader_written) == 20  # two of the twelve kinds, ten rounds
    before = current_snapshots_of(pg_engine)
    with pg_engine.begin() as conn:
        loader_upsert(conn, "newsession01", "192.0.2.1")
        loader_upsert(conn, "newsession02", "203.0.113.99")  # not in the inventory
        for sid in seeded.loader_written:  # a second ingestion keeps the first snapshot
            loader_upsert(conn, sid, "192.0.2.1")
    after = current_snapshots_of(pg_engine)
    assert after["newsession01"] == ("192.0.2.1", None, None, "VPN", T0.isoformat())
    assert after["newsession02"] == (None, None, None, None, None)
    for sid in seeded.loader_written:
        old, new = before[sid], after[sid]
        assert all(n == o for o, n in zip(old, new, strict=True) if o is not None)
    with pg_engine.connect() as conn:
        assert (
            _scalar(
                conn, "SELECT event_count FROM session_summaries WHERE session_id = 'newsession01'"
            )
            == 1
        )


@pytest.mark.postgres
def test_seed_is_deterministic(pg_url: str, pg_engine: sa.Engine) -> None:
    with pg_engine.begin() as conn:
        build_postgres(conn)
        first = seed_postgres(conn, sessions=50, seed=3)
        rows = conn.execute(sa.text("SELECT session_id FROM session_summaries ORDER BY 1")).all()
        conn.execute(sa.text("DELETE FROM raw_events"))
        conn.execute(sa.text("DELETE FROM session_summaries"))
        conn.execute(sa.text("DELETE FROM ip_inventory"))
        conn.execute(sa.text("DELETE FROM asn_inventory"))
        second = seed_postgres(conn, sessions=50, seed=3)
        again = conn.execute(sa.text("SELECT session_id FROM session_summaries ORDER BY 1")).all()
    assert first == second
    assert rows == again


@pytest.mark.postgres
def test_loader_upsert_fails_without_snapshot_ip_type(pg_engine: sa.Engine) -> None:
    with pg_engine.begin() as conn:
        build_postgres(conn, legacy_ip_types_column=True)
    with (
        pytest.raises(sa.exc.ProgrammingError, match="snapshot_ip_type"),
        pg_engine.begin() as conn,
    ):
        loader_upsert(conn, "abc", "192.0.2.1")


@pytest.mark.postgres
def test_oracle_on_hand_checked_sessions(pg_engine: sa.Engine) -> None:
    with pg_engine.begin() as conn:
        build_postgres(conn)
        for asn in (4134, 9009):
            conn.execute(
                sa.text(
                    "INSERT INTO asn_inventory (asn_number, first_seen, last_seen)"
                    " VALUES (:a, :t, :t)"
                ),
                {"a": asn, "t": T0},
            )
        _add_ip(
            conn,
            "198.51.100.1",
            {"maxmind": {"country": "de"}, "spur": {"client": {"types": ["RESIDENTIAL", "VPN"]}}},
            asn=4134,
        )
        _add_ip(conn, "198.51.100.2", {"spur": {"client": {"types": ["FOO", "BAR"]}}})
        _add_ip(
            conn,
            "198.51.100.3",
            {"cymru": {"country": "A1"}, "spur": {"client": {"types": "DATACENTER"}}},
            types=["TOR"],
        )
        _add_ip(
            conn,
            "2001:db8::a1",
            {
                "dshield": {"ip": {"ascountry": "nl"}},
                "spur": {"client": {"types": [3, "", "mobile", "MOBILE"]}},
            },
        )
        _add_session(conn, "meta", {"session_metadata": {"source_ip": " 198.51.100.1 "}})
        _add_session(
            conn,
            "meta_wins",
            {
                "session_metadata": {"source_ip": "198.51.100.2"},
                "dshield": {"ip": {"number": "198.51.100.1"}},
            },
        )
        _add_session(
            conn,
            "dshield",
            {"session_metadata": {"source_ip": 5}, "dshield": {"ip": {"number": "198.51.100.3"}}},
        )
        _add_session(conn, "events", None)
        _add_session(conn, "stranger", {"session_metadata": {"source_ip": "203.0.113.1"}})
        conn.execute(
            sa.text(
                "INSERT INTO session_summaries (session_id, source_ip, snapshot_asn, enrichment)"
                " VALUES ('kept', '198.51.100.1', 9009, CAST('{}' AS json))"
            )
        )
        for sid, src, at in (
            ("events", "198.51.100.1", None),
            ("events", "198.51.100.2", datetime(2025, 1, 2, tzinfo=UTC)),
            ("events", "2001:DB8::A1", T0),
        ):
            conn.execute(
                sa.text(
                    "INSERT INTO raw_events (source, payload, session_id, event_timestamp)"
                    " VALUES ('f', CAST(:p AS json), :s, :at)"
                ),
                {"p": json.dumps({"src_ip": src}), "s": sid, "at": at},
            )
    t0 = T0.isoformat()
    with pg_engine.connect() as conn:
        expected = expected_snapshots(conn)
        assert current_snapshots(conn)["kept"] == ("198.51.100.1", 9009, None, None, None)
    assert expected["meta"] == ("198.51.100.1", 4134, "DE", "VPN", t0)
    assert expected["meta_wins"] == ("198.51.100.2", None, None, "FOO", t0)
    assert expected["dshield"] == ("198.51.100.3", None, None, "TOR", t0)  # ip_types first
    assert expected["events"] == ("2001:db8::a1", None, "NL", "MOBILE", t0)
    assert expected["stranger"] == (None, None, None, None, None)
    assert expected["kept"] == ("198.51.100.1", 9009, "DE", "VPN", t0)


@pytest.mark.postgres
def test_oracle_on_the_seed_covers_every_kind(pg_engine: sa.Engine) -> None:
    with pg_engine.begin() as conn:
        build_postgres(conn)
        seeded = seed_postgres(conn)
    with pg_engine.connect() as conn:
        expected = expected_snapshots(conn)
        current = current_snapshots(conn)
    assert len(expected) == seeded.sessions == 400
    for sid in seeded.loader_written:  # what the loader wrote stays
        assert all(
            e == c for c, e in zip(current[sid], expected[sid], strict=True) if c is not None
        )
    types = {snap[3] for snap in expected.values()}
    assert {"VPN", "FOO", "DATACENTER", "TOR", "PROXY", "RESIDENTIAL", None} <= types
    assert any(snap[2] is None and snap[0] is not None for snap in expected.values())
    assert any(snap[0] == "2001:db8::a1" for snap in expected.values())
    unmatched = [sid for sid, snap in expected.items() if snap == (None,) * 5]
    assert len(unmatched) >= 40  # not in the inventory, or no IP at all


def test_build_sqlite_upgraded_has_no_snapshot_columns_nor_inventory(sqlite_url: str) -> None:
    engine = create_engine_from_url(sqlite_url)
    try:
        with engine.begin() as conn:
            build_sqlite(conn)
        inspector = sa.inspect(engine)
        assert not inspector.has_table("ip_inventory")
        assert not inspector.has_table("alembic_version")
        columns = {c["name"] for c in inspector.get_columns("session_summaries")}
        assert "source_ip" not in columns and "enrichment" in columns
        with engine.begin() as conn:
            assert _scalar(conn, "SELECT value FROM schema_state") == "17"
            conn.execute(
                sa.text("INSERT INTO session_summaries (session_id, enrichment) VALUES ('a', :e)"),
                {"e": '{"session_metadata": {"source_ip": "1.2.3.4"}}'},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO session_summaries (session_id, enrichment) VALUES ('b', '{bad')"
                )
            )
            assert expected_snapshots(conn) == {"a": (None,) * 5, "b": (None,) * 5}
    finally:
        engine.dispose()


def test_build_sqlite_fresh_is_what_upstream_builds(sqlite_url: str) -> None:
    engine = create_engine_from_url(sqlite_url)
    try:
        with engine.begin() as conn:
            build_sqlite(conn, fresh=True)
            conn.execute(
                sa.text(
                    "INSERT INTO ip_inventory (ip_address, first_seen, last_seen, enrichment,"
                    " enrichment_updated_at) VALUES ('1.2.3.4', :t, :t, :e, :t)"
                ),
                {"t": "2025-01-01 00:00:00.000000", "e": '{"maxmind": {"country": "cn"}}'},
            )
            conn.execute(
                sa.text("INSERT INTO session_summaries (session_id, enrichment) VALUES ('a', :e)"),
                {"e": '{"session_metadata": {"source_ip": "1.2.3.4"}}'},
            )
            assert expected_snapshots(conn) == {"a": ("1.2.3.4", None, "CN", None, T0.isoformat())}
        inspector = sa.inspect(engine)
        assert "geo_country" not in {c["name"] for c in inspector.get_columns("ip_inventory")}
        assert "snapshot_ip_type" in {c["name"] for c in inspector.get_columns("session_summaries")}
    finally:
        engine.dispose()


def current_snapshots_of(engine: sa.Engine) -> dict[str, tuple[object, ...]]:
    with engine.connect() as conn:
        return dict(current_snapshots(conn))


@pytest.mark.postgres
def test_loader_upsert_and_oracle_agree_on_every_seeded_ip(pg_engine: sa.Engine) -> None:
    """Two independent statements of the loader's rule (SQL here, Python in the oracle)."""
    with pg_engine.begin() as conn:
        build_postgres(conn)
        seed_postgres(conn, sessions=0)
        inventory = conn.execute(
            sa.text("SELECT ip_address, cardinality(ip_types) = 0 FROM ip_inventory")
        ).all()
        for n, (ip, _) in enumerate(inventory):
            loader_upsert(conn, f"probe{n:07d}", ip)
    with pg_engine.connect() as conn:
        written = current_snapshots(conn)
        expected = expected_snapshots(conn)
    assert len(written) == len(inventory) == 60
    for n, (_ip, no_ip_types) in enumerate(inventory):
        sid = f"probe{n:07d}"
        if no_ip_types:  # the loader reads only spur; the backfill reads ip_types first
            assert written[sid] == expected[sid]
        else:
            assert written[sid][:3] == expected[sid][:3]
