"""A corpus of malformed and hostile input, through the real ``alembic upgrade head``, on
SQLite and PostgreSQL.

Each case is one session (with the raw events and inventory rows it needs) and the
outcome the mapping rules of cowrieprocessor/backfill/sql/rules.py give it: the five snapshot
columns of a matched session, or the reason an unmatched one keeps its NULLs. All
sessions sit in one batch (``batch_size=1000``), so a single row that made the statement
fail would fail every case; and the run's summary must count the unmatched sessions by
reason, exactly.

Designed outcomes worth knowing (docs/reliability.md lists them): an IP is matched
only by its exact text after trimming spaces and lower-casing; there is no address
normalisation, so ``::ffff:1.2.3.4`` does not match ``1.2.3.4``, an expanded IPv6 does
not match its compressed form, an inventory address stored in upper case matches
nothing, and a tab or newline around an address is not trimmed.

Hostile knob values (SQL, shell, numbers in other notations, NUL) are refused by name,
from ``-x`` and from the environment alike.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from cowrieprocessor.backfill import BackfillKnobs, KnobError
from cowrieprocessor.testing.reliability.datasets import SCALE_OUT, SCALE_OUT_IDS
from cowrieprocessor.testing.reliability.figures import record
from cowrieprocessor.testing.runners import run_alembic
from cowrieprocessor.testing.seed import (
    T0,
    add_asn,
    at_0002,
    ev_t,
    ip_t,
    partitioned_at_0002,
    sess_t,
    snapshots,
)

NO_IP = "no canonical IP"
NOT_IN = "IP not in inventory"
SQL_NULL = sa.null()


@dataclass(frozen=True)
class Raw:
    """Text stored as is: malformed JSON, possible on SQLite only (JSON is text there)."""

    text: str


def ts(days: int = 0) -> str:
    return (T0 + timedelta(days=days)).isoformat()


def meta(ip: Any) -> dict[str, Any]:
    return {"session_metadata": {"source_ip": ip}}


def matched(
    ip: str,
    asn: int | None = 4134,
    country: str | None = "CN",
    ip_type: str | None = "VPN",
    at: str | None = ts(1),
) -> tuple[Any, ...]:
    return (ip, asn, country, ip_type, at)


FULL = matched("1.1.1.1")


@dataclass(frozen=True)
class Inventory:
    ip: str
    asn: int | None = 4134
    enrichment: Any = None  # None: {"maxmind": {"country": "CN"}}
    ip_types: Any = ("VPN", "DATACENTER")
    updated: datetime | None = T0 + timedelta(days=1)
    sqlite_only: bool = False


INVENTORY = [
    Inventory("1.1.1.1"),
    Inventory("2.2.2.2", enrichment={"maxmind": {"country": "XX"}}),
    Inventory("3.3.3.3", enrichment={"maxmind": {"country": "de"}}),
    Inventory("4.4.4.4", enrichment={}),  # no country anywhere: geo_country 'XX'
    Inventory("5.5.5.5", ip_types=()),
    Inventory("6.6.6.6", ip_types=SQL_NULL),
    Inventory("7.7.7.7", updated=None),
    Inventory("8.8.8.8", asn=None),
    Inventory("9.9.9.9", ip_types=("", "VPN")),
    Inventory("10.0.0.1", enrichment={"maxmind": {"country": 5}}),
    Inventory("10.0.0.6", ip_types=(None, "VPN")),
    Inventory("2001:db8::a"),
    Inventory("2001:DB8::B"),  # stored in upper case: no session can match it
    Inventory("::ffff:10.9.9.9"),
    Inventory("10.0.0.2", ip_types=Raw("[VPN"), sqlite_only=True),
    Inventory("10.0.0.3", ip_types=Raw('"VPN"'), sqlite_only=True),
    Inventory("10.0.0.4", enrichment={"maxmind": {"country": "USA"}}, sqlite_only=True),
    Inventory("10.0.0.5", ip_types=Raw('[1, "VPN"]'), sqlite_only=True),
]


@dataclass(frozen=True)
class Case:
    session_id: str
    enrichment: Any
    expect: tuple[Any, ...] | str
    events: tuple[Any, ...] = ()  # payloads, earliest first
    sqlite_only: bool = False


def src(ip: Any) -> dict[str, Any]:
    return {"eventid": "cowrie.session.connect", "src_ip": ip}


ODD_IDS = ["", "f" * 64, " lead", "!bang", "#hash", "'quote", "+plus", "-dash", ".dot", "%_"]

CASES = [
    # matched, with whatever the inventory row lacks left NULL
    Case("a1b2c3d4e5f6", meta("1.1.1.1"), FULL),
    Case("padded", meta("   1.1.1.1  "), FULL),
    Case("upper-v6", meta("2001:DB8::A"), matched("2001:db8::a")),
    Case("mapped-exact", meta("::FFFF:10.9.9.9"), matched("::ffff:10.9.9.9")),
    Case("country-xx", meta("2.2.2.2"), matched("2.2.2.2", country=None)),
    Case("country-lower", meta("3.3.3.3"), matched("3.3.3.3", country="DE")),
    Case("country-none", meta("4.4.4.4"), matched("4.4.4.4", country=None)),
    Case("country-number", meta("10.0.0.1"), matched("10.0.0.1", country=None)),
    Case("types-empty", meta("5.5.5.5"), matched("5.5.5.5", ip_type=None)),
    Case("types-null", meta("6.6.6.6"), matched("6.6.6.6", ip_type=None)),
    Case("types-first-empty", meta("9.9.9.9"), matched("9.9.9.9", ip_type=None)),
    Case("types-first-null", meta("10.0.0.6"), matched("10.0.0.6", ip_type=None)),
    Case("updated-null", meta("7.7.7.7"), matched("7.7.7.7", at=None)),
    Case("asn-null", meta("8.8.8.8"), matched("8.8.8.8", asn=None)),
    *(Case(sid, meta("1.1.1.1"), FULL) for sid in ODD_IDS),
    # unusable enrichment: the earliest usable src_ip of the raw events decides
    Case("enr-array", ["1.1.1.1"], FULL, (src("1.1.1.1"),)),
    Case("enr-string", "2.2.2.2", matched("3.3.3.3", country="DE"), (src("3.3.3.3"),)),
    Case("enr-number", 42, FULL, (src("1.1.1.1"),)),
    Case("enr-json-null", sa.JSON.NULL, FULL, (src("1.1.1.1"),)),
    Case("enr-sql-null", SQL_NULL, FULL, (src("1.1.1.1"),)),
    Case("meta-array", {"session_metadata": ["2.2.2.2"]}, FULL, (src("1.1.1.1"),)),
    Case(
        "events-skip-unusable",
        {},
        FULL,
        (
            {"eventid": "cowrie.session.connect", "peer_ip": "2.2.2.2"},
            src(16843009),
            src(""),
            src("   "),
            src(None),
            ["2.2.2.2"],
            "2.2.2.2",
            src(" 1.1.1.1 "),
            src("2.2.2.2"),
        ),
    ),
    # no canonical IP at all
    Case("no-events", {}, NO_IP),
    Case("meta-empty", {"session_metadata": {}}, NO_IP),
    Case("meta-array-only", {"session_metadata": ["1.1.1.1"]}, NO_IP),
    Case("meta-string", {"session_metadata": "1.1.1.1"}, NO_IP),
    Case("meta-number", {"session_metadata": 5}, NO_IP),
    Case("meta-null", {"session_metadata": None}, NO_IP),
    Case("ip-number", meta(16843009), NO_IP),
    Case("ip-empty", meta(""), NO_IP),
    Case("ip-spaces", meta("   "), NO_IP),
    Case("ip-bool", meta(True), NO_IP),
    Case("ip-object", meta({"ip": "1.1.1.1"}), NO_IP),
    Case("ip-array", meta(["1.1.1.1"]), NO_IP),
    Case("ip-null", meta(None), NO_IP),
    Case("enr-array-only", ["1.1.1.1"], NO_IP),
    Case("enr-sql-null-only", SQL_NULL, NO_IP),
    Case("events-without-src-ip", {}, NO_IP, ({"peer_ip": "1.1.1.1"}, src(None), src(7))),
    # an IP, but not one the inventory holds (exact text after trim + lower-case)
    Case("mapped-v4", meta("::ffff:1.1.1.1"), NOT_IN),
    Case("invalid-octets", meta("999.1.1.1"), NOT_IN),
    Case("not-an-ip", meta("not-an-ip"), NOT_IN),
    Case("cidr", meta("1.1.1.1/32"), NOT_IN),
    Case("tab", meta("1.1.1.1\t"), NOT_IN),
    Case("inventory-upper", meta("2001:db8::b"), NOT_IN),
    Case("expanded-v6", meta("2001:0db8:0000:0000:0000:0000:0000:000a"), NOT_IN),
    Case("too-long", meta("1" * 100), NOT_IN),
    Case("quote", meta("1.1.1.1' OR '1'='1"), NOT_IN),
    Case("fullwidth", meta("\uff11.\uff11.\uff11.\uff11"), NOT_IN),
    Case("event-ip-unknown", {}, NOT_IN, (src("203.0.113.1"),)),
    # malformed JSON text (SQLite only)
    Case("bad-json-enr", Raw('{"session_metadata": {"source_ip": "1.1.1.1"'), NO_IP, (), True),
    Case("bad-json-enr-events", Raw("{"), FULL, (Raw("{not json"), src("1.1.1.1")), True),
    Case("bad-json-events-only", {}, NO_IP, (Raw('{"src_ip": "1.1.1.1"'), Raw("")), True),
    Case("bad-types", meta("10.0.0.2"), matched("10.0.0.2", ip_type=None), (), True),
    Case("types-string", meta("10.0.0.3"), matched("10.0.0.3", ip_type=None), (), True),
    Case("country-3", meta("10.0.0.4"), matched("10.0.0.4", country=None), (), True),
    Case("types-number", meta("10.0.0.5"), matched("10.0.0.5", ip_type=None), (), True),
]


def _json_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def seed_corpus(conn: sa.Connection, dialect: str) -> list[Case]:
    add_asn(conn, 4134)
    for inv in INVENTORY:
        if inv.sqlite_only and dialect != "sqlite":
            continue
        enrichment = {"maxmind": {"country": "CN"}} if inv.enrichment is None else inv.enrichment
        row = dict(
            ip_address=inv.ip,
            current_asn=inv.asn,
            first_seen=T0,
            last_seen=T0,
            enrichment=enrichment,
            enrichment_updated_at=inv.updated,
            ip_types=None if isinstance(inv.ip_types, Raw) else _json_value(inv.ip_types),
        )
        conn.execute(sa.insert(ip_t).values(**row))
        if isinstance(inv.ip_types, Raw):
            conn.exec_driver_sql(
                "UPDATE ip_inventory SET ip_types = ? WHERE ip_address = ?",
                (inv.ip_types.text, inv.ip),
            )
    cases = [c for c in CASES if dialect == "sqlite" or not c.sqlite_only]
    for case in cases:
        if isinstance(case.enrichment, Raw):
            conn.exec_driver_sql(
                "INSERT INTO session_summaries (session_id, enrichment) VALUES (?, ?)",
                (case.session_id, case.enrichment.text),
            )
        else:
            conn.execute(
                sa.insert(sess_t).values(
                    session_id=case.session_id, first_event_at=T0, enrichment=case.enrichment
                )
            )
        for n, payload in enumerate(case.events):
            at = T0 + timedelta(seconds=n)
            if isinstance(payload, Raw):
                conn.exec_driver_sql(
                    "INSERT INTO raw_events (source, payload, session_id, event_timestamp) "
                    "VALUES ('f', ?, ?, ?)",
                    (payload.text, case.session_id, at.isoformat(sep=" ")),
                )
                continue
            conn.execute(
                sa.insert(ev_t).values(
                    source="/var/log/cowrie/cowrie.json",
                    payload=payload,
                    session_id=case.session_id,
                    event_type="cowrie.session.connect",
                    event_timestamp=at,
                )
            )
    # events of no session, and of a NULL session: never anyone's canonical IP
    for sid in ("orphan", None):
        conn.execute(sa.insert(ev_t).values(source="f", payload=src("1.1.1.1"), session_id=sid))
    return cases


def test_every_bad_input_has_its_expected_outcome_and_the_summary_counts_them(
    db_url: str,
) -> None:
    engine = at_0002(db_url)
    dialect = engine.dialect.name
    with engine.begin() as conn:
        cases = seed_corpus(conn, dialect)
    out = run_alembic(db_url, "upgrade", "head", x={"batch_size": "1000"})
    n_match, n_no_ip, n_not_in = assert_outcomes(out, engine, cases)
    inventory = [i for i in INVENTORY if dialect == "sqlite" or not i.sqlite_only]
    events = sum(len(c.events) for c in cases) + 2
    record(
        "bad input corpus",
        dialect=dialect,
        sessions=len(cases),
        inventory_rows=len(inventory),
        raw_events=events,
        bad_inputs_tried=len(cases) + len(inventory) + events,
        matched=n_match,
        unmatched_no_ip=n_no_ip,
        unmatched_not_in_inventory=n_not_in,
        crashes=0,
    )


@pytest.mark.parametrize(("partition", "join_back"), SCALE_OUT, ids=SCALE_OUT_IDS)
def test_the_corpus_partitioned_or_joined_back_by_key_has_the_same_outcomes(
    pg_url: str, partition: str | None, join_back: str
) -> None:
    """The same corpus with session_summaries and raw_events partitioned before the
    deploy, and with the key join-back (its own statements: no ctid, no LATERAL)."""
    engine = partitioned_at_0002(pg_url, partition) if partition else at_0002(pg_url)
    with engine.begin() as conn:
        cases = seed_corpus(conn, "postgresql")
    out = run_alembic(pg_url, "upgrade", "head", x={"batch_size": "1000", "join_back": join_back})
    assert f"join-back: by {'session_id' if join_back == 'key' else 'ctid'}" in out.stderr
    if partition:
        assert "session_summaries is partitioned" in out.stderr
    assert_outcomes(out, engine, cases)


def assert_outcomes(
    out: subprocess.CompletedProcess[str], engine: sa.Engine, cases: list[Case]
) -> tuple[int, int, int]:
    """Every case has its outcome, and the run's summary counts them by reason exactly.
    Returns (matched, no canonical IP, IP not in inventory)."""
    assert out.returncode == 0, out.stderr
    got = snapshots(engine)
    engine.dispose()
    wrong = {
        repr(c.session_id): (got[c.session_id], c.expect)
        for c in cases
        if got[c.session_id] != (c.expect if isinstance(c.expect, tuple) else (None,) * 5)
    }
    assert not wrong, wrong
    reasons = [c.expect if isinstance(c.expect, str) else "matched" for c in cases]
    n_match, n_no_ip, n_not_in = (reasons.count(r) for r in ("matched", NO_IP, NOT_IN))
    summary = re.search(
        r"Matched in inventory: (\d+); unmatched: (\d+) \(no canonical IP: (\d+), "
        r"IP not in inventory: (\d+)\)",
        out.stderr,
    )
    assert summary, out.stderr
    assert tuple(map(int, summary.groups())) == (n_match, n_no_ip + n_not_in, n_no_ip, n_not_in)
    assert f"updated {n_match} sessions of {len(cases)}" in out.stderr
    assert ", retries: 0, ranges split: 0" in out.stderr
    return n_match, n_no_ip, n_not_in


def test_the_corpus_walked_one_session_per_range_gives_the_same_outcomes(sqlite_url: str) -> None:
    """Every odd key and bad row at a range edge: the walk neither stops nor skips."""
    engine = at_0002(sqlite_url)
    with engine.begin() as conn:
        cases = seed_corpus(conn, "sqlite")
    out = run_alembic(sqlite_url, "upgrade", "head", x={"batch_size": "1"})
    assert out.returncode == 0, out.stderr
    got = snapshots(engine)
    engine.dispose()
    for case in cases:
        want = case.expect if isinstance(case.expect, tuple) else (None,) * 5
        assert got[case.session_id] == want, repr(case.session_id)


# --- hostile knob values ------------------------------------------------------------


HOSTILE = [
    "1; DROP TABLE session_summaries",
    "0) OR (1=1",
    "10'--",
    "$(touch /tmp/x)",
    "1e9",
    "-1",
    "0x10",
    "10 ms; SELECT pg_sleep(10)",
    "NaN",
    "\u0000",
    "",
]


@pytest.mark.parametrize("value", HOSTILE, ids=[f"v{n}" for n in range(len(HOSTILE))])
@pytest.mark.parametrize(
    "knob",
    [
        "batch_size",
        "lock_timeout",
        "statement_timeout",
        "pause_ms",
        "max_replica_lag",
        "max_wal_rate",
    ],
)
def test_hostile_knob_values_are_refused_by_name(knob: str, value: str) -> None:
    for source in ({knob: value}, None):
        env = {} if source else {f"COWRIE_BACKFILL_{knob.upper()}": value}
        with pytest.raises(KnobError, match=knob):
            BackfillKnobs.from_sources(source, env)
    # and while a job runs (`cowrie-db control set`), by the same parser
    with pytest.raises(KnobError, match=knob):
        BackfillKnobs().with_overrides({knob: value}, "cowrie-db control set")


def test_an_absurdly_long_number_is_refused_by_name() -> None:
    with pytest.raises(KnobError, match="batch_size"):
        BackfillKnobs.from_sources({"batch_size": "9" * 5000}, {})
