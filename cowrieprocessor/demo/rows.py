"""How a generated row is spelled and where it goes.

Time is integer microseconds after 2025-01-01T00:00:00Z, formatted by lookup;
:class:`Format` spells a value for the dialect (COPY text on PostgreSQL, sqlite3
parameters on SQLite); :class:`Table` names a table and the columns of a row, in order.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from datetime import datetime, timedelta

Row = tuple[object, ...]

# --- time: integer microseconds after 2025-01-01T00:00:00Z ------------------------------

EPOCH = datetime(2025, 1, 1)
SECOND = 1_000_000
DAY = 86_400 * SECOND
WINDOW = 365 * DAY  # sessions start during 2025
DAYS = tuple((EPOCH + timedelta(days=d)).strftime("%Y-%m-%d") for d in range(1000))


@functools.cache
def clock() -> tuple[str, ...]:
    """``HH:MM:SS`` of every second of a day (formatting by lookup is ~4x faster)."""
    return tuple(
        f"{h:02d}:{m:02d}:{s:02d}" for h in range(24) for m in range(60) for s in range(60)
    )


def day(us: int) -> str:
    return DAYS[us // DAY]


def cowrie_ts(us: int) -> str:
    """Cowrie's own timestamp format: ``2025-03-04T12:34:56.123456Z``."""
    d, rest = divmod(us, DAY)
    second, micro = divmod(rest, SECOND)
    return f"{DAYS[d]}T{clock()[second]}.{micro:06d}Z"


class Format:
    """How a value is spelled for the dialect (COPY csv on PostgreSQL, sqlite3 parameters)."""

    def __init__(self, dialect: str) -> None:
        self.pg = dialect == "postgresql"
        self.true: object = "t" if self.pg else 1
        self.false: object = "f" if self.pg else 0
        # SQLite: SQLAlchemy's DateTime storage format; PostgreSQL: timestamptz in UTC.
        self._suffix = "+00" if self.pg else ""
        self._clock = clock()

    def ts(self, us: int | None) -> str | None:
        if us is None:
            return None
        d, rest = divmod(us, DAY)
        second, micro = divmod(rest, SECOND)
        return f"{DAYS[d]} {self._clock[second]}.{micro:06d}{self._suffix}"

    def flag(self, value: bool) -> object:
        return self.true if value else self.false

    def ip_types(self, types: list[str]) -> str:
        if self.pg:  # text[] literal; the names need no quoting
            return "{" + ",".join(types) + "}"
        return "[" + ",".join(f'"{t}"' for t in types) + "]"


# Hot rows are assembled from f-string templates (ten times faster than json.dumps);
# every free-text value that goes into them is JSON-encoded once, per value or per ASN.
SORTED_JSON = json.JSONEncoder(separators=(",", ":"), sort_keys=True)
JSON = json.JSONEncoder(separators=(",", ":"))


# --- the tables ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Table:
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

    def without(self, generated: set[str]) -> Table:
        """This table minus the target's GENERATED columns (it computes them itself)."""
        keep = tuple(i for i, c in enumerate(self.columns) if c not in generated)
        if len(keep) == len(self.columns):
            return self
        return Table(self.name, tuple(self.columns[i] for i in keep), keep)


ASN_TABLE = Table(
    "asn_inventory",
    (
        "asn_number", "organization_name", "organization_country", "rir_registry", "asn_type",
        "first_seen", "last_seen", "unique_ip_count", "total_session_count", "enrichment",
        "enrichment_updated_at", "created_at", "updated_at",
    ),
)  # fmt: skip
IP_TABLE = Table(
    "ip_inventory",
    (
        "ip_address", "current_asn", "asn_last_verified", "first_seen", "last_seen",
        "session_count", "enrichment", "enrichment_updated_at", "enrichment_version",
        "ip_types", "is_scanner", "is_bogon", "created_at", "updated_at",
    ),
)  # fmt: skip
SESSION_TABLE = Table(
    "session_summaries",
    (
        "session_id", "first_event_at", "last_event_at", "event_count", "command_count",
        "file_downloads", "login_attempts", "ssh_key_injections", "unique_ssh_keys",
        "vt_flagged", "dshield_flagged", "risk_score", "matcher", "source_files", "enrichment",
        "created_at", "updated_at",
    ),
)  # fmt: skip
EVENT_TABLE = Table(
    "raw_events",
    (
        "ingest_id", "ingest_at", "source", "source_offset", "payload", "payload_hash",
        "session_id", "event_type", "event_timestamp",
    ),
)  # fmt: skip
TABLES = (ASN_TABLE, IP_TABLE, SESSION_TABLE, EVENT_TABLE)
