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
long as the id sequence starts fresh); ``chunk_size`` changes no value. Each chunk's
sessions are written in arrival order (``created_at``, the loader's next run, then the
id), as the field's tables hold them: neighbouring times, random ids.
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

Where things are
----------------
``spec`` (what to generate, what was written, the error), ``reference`` (countries,
ASNs, behaviours: the world the data describes), ``streams`` (seeded random streams,
keyed bijections, the attack timeline), ``rows`` (time and value formats, the tables),
``inventory`` and ``sessions`` (the rows themselves), ``sink`` (the catalog check and
the writing: COPY or executemany), ``generator`` (the steps of a run, in their order).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy import Engine

from cowrieprocessor.demo.generator import Generator
from cowrieprocessor.demo.rows import Format
from cowrieprocessor.demo.sink import COUNT_SQL, Sink, check_schema, target_tables
from cowrieprocessor.demo.spec import DemoDataError, DemoResult, DemoSpec, validate

__all__ = ["DemoDataError", "DemoResult", "DemoSpec", "generate"]


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
    validate(spec, chunk_size)
    dialect = engine.dialect.name
    if dialect not in ("postgresql", "sqlite"):
        raise DemoDataError(f"unsupported database dialect {dialect!r}: use PostgreSQL or SQLite")
    check_schema(engine)
    with engine.connect() as conn:
        if dialect == "sqlite":  # take the write lock up front (see db/engine.py)
            conn = conn.execution_options(sqlite_begin="IMMEDIATE")
        with conn.begin():
            sessions, ips, asns = conn.execute(sa.text(COUNT_SQL)).one()
            tables = target_tables(conn, dialect)
        if sessions and not force:
            raise DemoDataError(
                f"session_summaries already holds {sessions:,} rows: demo data goes into an "
                "empty database (pass force=True, or --force, to add it on top)"
            )
        # On top of existing rows, every stream is salted with what is there: a second
        # run with the same seed then draws new keys instead of skipping the old ones.
        salt = f"/on-top-of/{sessions}/{ips}/{asns}" if sessions or ips or asns else ""
        check = {"session": sessions > 0, "ip": ips > 0, "asn": asns > 0}
        sink = Sink(conn, dialect, tables)
        generator = Generator(spec, sink, Format(dialect), chunk_size, check, salt)
        result = generator.run(on_progress)
    result.seconds = time.perf_counter() - started
    return result
