"""What the data revision writes: each mapping rule, on SQLite and PostgreSQL, through
the real Alembic upgrade from 0002 to 0003.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from cowrieprocessor.testing.runners import run_alembic
from cowrieprocessor.testing.seed import (
    T0,
    add_asn,
    add_event,
    add_ip,
    add_session,
    at_0002,
    migrate,
    snapshots,
)

BACKFILL = "0003_backfill_session_snapshots"
Seeder = Callable[[sa.Connection], None]


@pytest.fixture
def backfilled(db_url: str) -> Iterator[Callable[[Seeder], dict[str, tuple[Any, ...]]]]:
    """Seed a database at 0002, run the backfill revision, return the snapshots."""
    engine = at_0002(db_url)

    def run(seed: Seeder) -> dict[str, tuple[Any, ...]]:
        with engine.begin() as conn:
            add_asn(conn, 4134, "CHINANET", "CN")
            add_asn(conn, 14061, "DIGITALOCEAN", "US")
            seed(conn)
        migrate(db_url, BACKFILL)
        return snapshots(engine)

    yield run
    engine.dispose()


def ts(days: int = 0) -> str:
    return (T0 + timedelta(days=days)).isoformat()


def test_fills_all_five_columns_of_a_matched_session(backfilled: Any) -> None:
    def seed(conn: sa.Connection) -> None:
        add_ip(
            conn,
            "1.2.3.4",
            asn=4134,
            country="CN",
            ip_types=["VPN", "DATACENTER"],
            updated_at=T0 + timedelta(days=3),
        )
        add_session(conn, "a1b2c3d4e5f6", meta_ip="1.2.3.4")

    assert backfilled(seed)["a1b2c3d4e5f6"] == ("1.2.3.4", 4134, "CN", "VPN", ts(3))


def test_existing_source_ip_wins_over_metadata_and_events(backfilled: Any) -> None:
    def seed(conn: sa.Connection) -> None:
        add_ip(conn, "1.1.1.1", asn=4134)
        add_ip(conn, "2.2.2.2", asn=14061, country="US")
        add_session(conn, "s1", meta_ip="1.1.1.1", source_ip="2.2.2.2")
        add_event(conn, "s1", "1.1.1.1")

    assert backfilled(seed)["s1"][:3] == ("2.2.2.2", 14061, "US")


def test_metadata_ip_is_trimmed_and_lowercased(backfilled: Any) -> None:
    def seed(conn: sa.Connection) -> None:
        add_ip(conn, "2001:db8::1", asn=14061, country="US")
        add_session(conn, "v6", meta_ip="  2001:DB8::1 ")

    assert backfilled(seed)["v6"][:2] == ("2001:db8::1", 14061)


def test_metadata_wins_over_raw_events(backfilled: Any) -> None:
    def seed(conn: sa.Connection) -> None:
        add_ip(conn, "1.1.1.1", asn=4134)
        add_ip(conn, "2.2.2.2", asn=14061)
        add_session(conn, "s1", meta_ip="1.1.1.1")
        add_event(conn, "s1", "2.2.2.2", at=T0 - timedelta(days=1))

    assert backfilled(seed)["s1"][0] == "1.1.1.1"


def test_falls_back_to_src_ip_of_the_earliest_event(backfilled: Any) -> None:
    def seed(conn: sa.Connection) -> None:
        for ip in ("1.1.1.1", "2.2.2.2", "3.3.3.3", "4.4.4.4"):
            add_ip(conn, ip)
        # by event_timestamp first, whatever the id order
        add_session(conn, "by_time", enrichment={"session_metadata": {}})
        add_event(conn, "by_time", "2.2.2.2", at=T0 + timedelta(hours=2), event_id=1)
        add_event(conn, "by_time", "1.1.1.1", at=T0 + timedelta(hours=1), event_id=2)
        # equal timestamps: the lower id wins
        add_session(conn, "by_id", enrichment=None)
        add_event(conn, "by_id", "4.4.4.4", at=T0, event_id=11)
        add_event(conn, "by_id", "3.3.3.3", at=T0, event_id=10)
        # an event without src_ip, or with a NULL timestamp, does not win
        add_session(conn, "skips", enrichment={})
        add_event(conn, "skips", None, at=T0 - timedelta(days=9), event_id=20)
        add_event(conn, "skips", "2.2.2.2", at=None, event_id=21)
        add_event(conn, "skips", " 3.3.3.3", at=T0, event_id=22)

    got = backfilled(seed)
    assert got["by_time"][0] == "1.1.1.1"
    assert got["by_id"][0] == "3.3.3.3"
    assert got["skips"][0] == "3.3.3.3"


def test_does_not_overwrite_existing_snapshot_values(backfilled: Any) -> None:
    def seed(conn: sa.Connection) -> None:
        add_ip(conn, "1.1.1.1", asn=4134, country="CN", ip_types=["TOR"])
        add_session(conn, "partial", meta_ip="1.1.1.1", snapshot_asn=9999, snapshot_country="NL")
        add_session(
            conn,
            "full",
            meta_ip="1.1.1.1",
            source_ip="1.1.1.1",
            snapshot_asn=1,
            snapshot_country="DE",
            snapshot_ip_type="MOBILE",
            enrichment_at=T0,
        )

    got = backfilled(seed)
    assert got["partial"] == ("1.1.1.1", 9999, "NL", "TOR", ts())
    assert got["full"] == ("1.1.1.1", 1, "DE", "MOBILE", ts())


def test_unmatched_sessions_keep_nulls_and_get_no_sentinels(backfilled: Any) -> None:
    def seed(conn: sa.Connection) -> None:
        add_ip(conn, "1.1.1.1")
        add_session(conn, "not_in_inventory", meta_ip="9.9.9.9")
        add_session(conn, "no_ip_at_all", enrichment={"other": 1})
        add_session(conn, "null_enrichment")
        add_session(conn, "event_ip_unknown")
        add_event(conn, "event_ip_unknown", "8.8.8.8")

    got = backfilled(seed)
    for sid in ("not_in_inventory", "no_ip_at_all", "null_enrichment", "event_ip_unknown"):
        assert got[sid] == (None,) * 5, sid


@pytest.mark.parametrize(
    ("country", "expected"),
    [("CN", "CN"), ("de", "DE"), ("XX", None), ("", None), (None, None), ("U", None)],
)
def test_country_mapping(backfilled: Any, country: Any, expected: Any) -> None:
    def seed(conn: sa.Connection) -> None:
        add_ip(conn, "1.1.1.1", country=country)
        add_session(conn, "s", meta_ip="1.1.1.1")

    got = backfilled(seed)["s"]
    assert got[0] == "1.1.1.1"
    assert got[2] == expected


def test_country_falls_back_through_cymru_and_dshield(backfilled: Any) -> None:
    def seed(conn: sa.Connection) -> None:
        add_ip(conn, "1.1.1.1", enrichment={"cymru": {"country": "br"}})
        add_ip(conn, "2.2.2.2", enrichment={"dshield": {"ip": {"ascountry": "RU"}}})
        add_session(conn, "cymru", meta_ip="1.1.1.1")
        add_session(conn, "dshield", meta_ip="2.2.2.2")

    got = backfilled(seed)
    assert got["cymru"][2] == "BR"
    assert got["dshield"][2] == "RU"


@pytest.mark.parametrize(
    ("ip_types", "expected"),
    [(["VPN", "TOR"], "VPN"), (["RESIDENTIAL"], "RESIDENTIAL"), ([], None)],
)
def test_ip_type_is_the_first_classification(
    backfilled: Any, ip_types: list[str], expected: Any
) -> None:
    def seed(conn: sa.Connection) -> None:
        add_ip(conn, "1.1.1.1", ip_types=ip_types)
        add_session(conn, "s", meta_ip="1.1.1.1")

    assert backfilled(seed)["s"][3] == expected


def test_missing_inventory_values_stay_null_but_the_session_is_matched(backfilled: Any) -> None:
    def seed(conn: sa.Connection) -> None:
        add_ip(conn, "1.1.1.1", asn=None, country=None, ip_types=[], updated_at=None)
        add_session(conn, "s", meta_ip="1.1.1.1")

    assert backfilled(seed)["s"] == ("1.1.1.1", None, None, None, None)


def test_empty_string_and_odd_session_ids_are_backfilled(db_url: str) -> None:
    engine = at_0002(db_url)
    odd_ids = ["", " ", "!", "-", "0", "A", "a" * 64, "zzzz", "\u00e9t\u00e9"]
    with engine.begin() as conn:
        add_asn(conn, 4134)
        add_ip(conn, "1.1.1.1")
        for sid in odd_ids:
            add_session(conn, sid, meta_ip="1.1.1.1")
    out = run_alembic(db_url, "upgrade", BACKFILL, x={"batch_size": "2"})
    assert out.returncode == 0, out.stderr
    got = snapshots(engine)
    engine.dispose()
    assert {sid for sid, snap in got.items() if snap[0] == "1.1.1.1"} == set(odd_ids)


@pytest.mark.parametrize(
    "enrichment",
    [
        ["not", "an", "object"],
        "a string",
        42,
        {"session_metadata": ["1.1.1.1"]},
        {"session_metadata": "1.1.1.1"},
        {"session_metadata": {"source_ip": 16843009}},
        {"session_metadata": {"source_ip": ""}},
        {"session_metadata": {"source_ip": None}},
    ],
    ids=[
        "array",
        "string",
        "number",
        "meta-array",
        "meta-string",
        "ip-number",
        "ip-empty",
        "ip-null",
    ],
)
def test_unusable_enrichment_falls_through_to_raw_events(backfilled: Any, enrichment: Any) -> None:
    def seed(conn: sa.Connection) -> None:
        add_ip(conn, "1.1.1.1")
        add_ip(conn, "2.2.2.2")
        add_session(conn, "odd", enrichment=enrichment)
        add_event(conn, "odd", "2.2.2.2")
        add_session(conn, "fine", meta_ip="1.1.1.1")

    got = backfilled(seed)
    assert got["odd"][0] == "2.2.2.2"
    assert got["fine"][0] == "1.1.1.1"


def test_malformed_json_text_does_not_abort_the_batch(sqlite_url: str) -> None:
    """SQLite stores JSON as text: one malformed row must not stop its batch."""
    engine = at_0002(sqlite_url)
    with engine.begin() as conn:
        add_asn(conn, 4134)
        add_ip(conn, "1.1.1.1")
        add_session(conn, "before", meta_ip="1.1.1.1")
        conn.exec_driver_sql(
            "INSERT INTO session_summaries (session_id, enrichment) VALUES (?, ?)",
            ("broken", '{"session_metadata": {"source_ip": "1.1.1.1"'),
        )
        conn.exec_driver_sql(
            "INSERT INTO raw_events (source, payload, session_id, event_timestamp) "
            "VALUES ('f', '{not json', 'broken', '2025-01-01 00:00:00')"
        )
        add_event(conn, "broken", "1.1.1.1", at=T0 + timedelta(seconds=1))
        add_session(conn, "zafter", meta_ip="1.1.1.1")
    migrate(sqlite_url, BACKFILL)
    got = snapshots(engine)
    engine.dispose()
    assert got["before"][0] == got["zafter"][0] == "1.1.1.1"
    assert got["broken"][0] == "1.1.1.1"  # from the well-formed event


def test_dshield_number_comes_after_metadata_and_before_raw_events(backfilled: Any) -> None:
    def seed(conn: sa.Connection) -> None:
        add_ip(conn, "1.1.1.1", asn=4134)
        add_ip(conn, "2.2.2.2", asn=14061, country="US")
        dshield = {"dshield": {"ip": {"number": " 2.2.2.2 "}}}
        add_session(conn, "dshield_only", enrichment=dshield)
        add_session(
            conn, "both", enrichment={"session_metadata": {"source_ip": "1.1.1.1"}, **dshield}
        )
        add_session(conn, "over_events", enrichment=dshield)
        add_event(conn, "over_events", "1.1.1.1")
        add_session(conn, "number_not_a_string", enrichment={"dshield": {"ip": {"number": 7}}})
        add_event(conn, "number_not_a_string", "1.1.1.1")

    got = backfilled(seed)
    assert got["dshield_only"][:2] == ("2.2.2.2", 14061)
    assert got["both"][0] == "1.1.1.1"
    assert got["over_events"][0] == "2.2.2.2"
    assert got["number_not_a_string"][0] == "1.1.1.1"


@pytest.mark.parametrize(
    ("types", "expected"),
    [
        (["RESIDENTIAL", "VPN"], "VPN"),
        (["MOBILE", "DATACENTER", "TOR"], "TOR"),
        (["FOO", "RESIDENTIAL"], "RESIDENTIAL"),
        (["FOO", "BAR"], "FOO"),
        (["", 3, "PROXY"], "PROXY"),
        ("DATACENTER", "DATACENTER"),
        ([], None),
        ("", None),
        ({"not": "a list"}, None),
    ],
)
def test_ip_type_falls_back_to_spur_types_by_the_loaders_priority(
    backfilled: Any, types: Any, expected: Any
) -> None:
    def seed(conn: sa.Connection) -> None:
        enrichment = {"maxmind": {"country": "CN"}, "spur": {"client": {"types": types}}}
        add_ip(conn, "1.1.1.1", ip_types=[], enrichment=enrichment)
        add_ip(conn, "2.2.2.2", ip_types=["MOBILE"], enrichment=enrichment)
        add_session(conn, "spur", meta_ip="1.1.1.1")
        add_session(conn, "ip_types_first", meta_ip="2.2.2.2")

    got = backfilled(seed)
    assert got["spur"][3] == expected
    assert got["ip_types_first"][3] == "MOBILE"
