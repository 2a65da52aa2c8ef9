"""What the backfill writes, and to which rows: the fragments every statement shares.

Which value goes where (see docs/runbook.md, "What the backfill writes"):

* canonical IP of a session: its existing ``source_ip``; else
  ``enrichment -> session_metadata -> source_ip`` when that is a JSON string (trimmed,
  lower-cased, non-empty); else the ``src_ip`` (a non-empty JSON string, trimmed and
  lower-cased) of its earliest ``raw_events`` row that has one, by
  ``event_timestamp`` (NULL last), then ``id``;
* a session is *matched* when that IP is an ``ip_inventory.ip_address``;
* each NULL snapshot column of a matched session gets: ``source_ip`` = ``ip_address``,
  ``snapshot_asn`` = ``current_asn``, ``snapshot_country`` = ``geo_country`` when it is
  two upper-case letters other than ``XX`` (else NULL), ``snapshot_ip_type`` = the
  first element of ``ip_types`` when it is a non-empty string (else NULL),
  ``enrichment_at`` = ``enrichment_updated_at``;
* a column that has a value keeps it; a row whose columns would not change is not
  written; an unmatched session keeps NULLs: no sentinel values.

Malformed JSON (possible on SQLite, where JSON is text) is guarded with
``json_valid`` inside ``CASE`` (which SQLite evaluates lazily), so one bad row never
aborts a batch: it simply has no IP from that source.

Which rows a range statement looks at: the walk takes every session of the range that
lacks any snapshot column (``NEEDS_SNAPSHOT``); the catch-up pass takes only those
without ``source_ip`` (``CATCHUP_NEEDS``). Every session the walk matched has a
``source_ip``, so what the catch-up finds are the unmatched sessions and the ones
inserted behind the walk, without resolving again the ~40% of matched sessions whose
inventory row lacks a country, a type or a date. The mapping is the same in both.

The conditions on a session ``s``, each defined here once:

* ``NEEDS_SNAPSHOT``: any of the five columns is NULL (what the walk looks at);
* ``CATCHUP_NEEDS``: no ``source_ip`` (what the catch-up looks at);
* ``HAS_SOURCE_IP``: its negation, a session the backfill matched or that came with
  its IP (what ``cowrie-db check`` and ``verify`` count as *with a snapshot*);
* ``HAS_SNAPSHOT``: any of the five columns has a value (what a clear NULLs, and
  ``status`` counts as having snapshot values).
"""

from __future__ import annotations

# The five columns the backfill writes (the ORM's are ``db.models.SNAPSHOT_COLUMNS``; the
# commands start without the ORM).
SNAPSHOT_COLUMNS = frozenset(
    {"source_ip", "snapshot_asn", "snapshot_country", "snapshot_ip_type", "enrichment_at"}
)
NEEDS_SNAPSHOT = (
    "(s.source_ip IS NULL OR s.snapshot_asn IS NULL OR s.snapshot_country IS NULL "
    "OR s.snapshot_ip_type IS NULL OR s.enrichment_at IS NULL)"
)
CATCHUP_NEEDS = "(s.source_ip IS NULL)"
HAS_SNAPSHOT = (
    "(s.source_ip IS NOT NULL OR s.snapshot_asn IS NOT NULL OR s.snapshot_country IS NOT NULL "
    "OR s.snapshot_ip_type IS NOT NULL OR s.enrichment_at IS NOT NULL)"
)
# The negation of CATCHUP_NEEDS: the sessions the reports count as having a snapshot.
HAS_SOURCE_IP = "(s.source_ip IS NOT NULL)"


def _would_change(ip: str, asn: str, country: str, ip_type: str, at: str) -> str:
    """A NULL column (of these five, as named) that the inventory row ``m`` would fill."""
    return f"""(
      {ip} IS NULL
      OR ({asn} IS NULL AND m.current_asn IS NOT NULL)
      OR ({country} IS NULL AND m.country IS NOT NULL)
      OR ({ip_type} IS NULL AND m.ip_type IS NOT NULL)
      OR ({at} IS NULL AND m.enrichment_updated_at IS NOT NULL))"""


WOULD_CHANGE = _would_change(
    "s.source_ip", "s.snapshot_asn", "s.snapshot_country", "s.snapshot_ip_type", "s.enrichment_at"
)
SET_NULL_ONLY = """
    source_ip = COALESCE(s.source_ip, m.ip_address),
    snapshot_asn = COALESCE(s.snapshot_asn, m.current_asn),
    snapshot_country = COALESCE(s.snapshot_country, m.country),
    snapshot_ip_type = COALESCE(s.snapshot_ip_type, m.ip_type),
    enrichment_at = COALESCE(s.enrichment_at, m.enrichment_updated_at)"""

# WOULD_CHANGE, judged on the values the resolution read (the key path, resolve_pg_key).
WOULD_CHANGE_READ = _would_change(
    "m.old_ip", "m.old_asn", "m.old_country", "m.old_type", "m.old_at"
)

# The IP sources in the canonical order; `src` in a resolved row is the 1-based position
# of the source that gave its IP (cowrie-db check reports how many each one resolves).
IP_SOURCES = ("source_ip", "session_metadata", "dshield", "raw_events")

# snapshot_ip_type from the inventory's spur types: a list is ranked by the loader's
# priority, then list order. Fixed text from this constant, never a value from a row.
SPUR_PRIORITY = ("VPN", "TOR", "PROXY", "DATACENTER", "RESIDENTIAL", "MOBILE")


def priority_case(value: str) -> str:
    """A rank of ``value`` (fixed SQL) in SPUR_PRIORITY; a type not in it ranks last."""
    whens = " ".join(f"WHEN '{t}' THEN {n}" for n, t in enumerate(SPUR_PRIORITY))
    return f"CASE {value} {whens} ELSE {len(SPUR_PRIORITY)} END"
