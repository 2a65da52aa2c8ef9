"""A writer ingests sessions while the backfill runs: it sees no error and waits under a
second, every increment it makes is kept, and the sessions it adds are caught up."""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa

from cowrieprocessor.backfill import BACKFILL_JOB
from cowrieprocessor.backfill.progress import DONE, WALK
from cowrieprocessor.db.engine import create_engine_from_url
from cowrieprocessor.testing.reliability.datasets import Dataset
from cowrieprocessor.testing.reliability.figures import SEED, record
from cowrieprocessor.testing.reliability.outcomes import NULLS, differences
from cowrieprocessor.testing.runners import Alembic, progress_state, wait_until
from cowrieprocessor.testing.seed import T0, ev_t, sess_t, snapshots


@dataclass
class Writer:
    """The loader: inserts a new session with its connect event and bumps the counters of
    an existing one, in one transaction, every ``interval`` seconds."""

    url: str
    existing: list[str]
    inventory: list[str]
    interval: float
    rng: random.Random
    latencies: list[tuple[float, float]] = field(default_factory=list)  # started, seconds
    errors: list[str] = field(default_factory=list)
    new: list[tuple[str, str, bool, float]] = field(default_factory=list)  # id, ip, match, at
    bumps: Counter[str] = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        engine = create_engine_from_url(self.url, application_name="cowrie-loader")
        taken = set(self.existing)
        try:
            while not self.stop.is_set():
                started = time.monotonic()
                sid = f"{self.rng.getrandbits(48):012x}"
                if sid in taken:
                    continue
                taken.add(sid)
                matchable = self.rng.random() < 0.8
                ip = (
                    self.rng.choice(self.inventory)
                    if matchable
                    else f"198.51.100.{self.rng.randrange(256)}"
                )
                bump = self.rng.choice(self.existing)
                try:
                    self._write(engine, sid, ip, bump)
                except Exception as exc:  # the writer must never fail: collect and go on
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                else:
                    done = time.monotonic()
                    self.latencies.append((started, done - started))
                    self.new.append((sid, ip, matchable, done))
                    self.bumps[bump] += 1
                self.stop.wait(max(0.0, self.interval - (time.monotonic() - started)))
        finally:
            engine.dispose()

    @staticmethod
    def _write(engine: sa.Engine, sid: str, ip: str, bump: str) -> None:
        with engine.connect() as conn:
            if conn.dialect.name == "sqlite":  # take the write lock up front, as the loader does
                conn = conn.execution_options(sqlite_begin="IMMEDIATE")
            with conn.begin():
                conn.execute(
                    sa.insert(sess_t).values(
                        session_id=sid,
                        first_event_at=T0,
                        enrichment={"session_metadata": {"source_ip": ip}},
                    )
                )
                conn.execute(
                    sa.insert(ev_t).values(
                        source="/var/log/cowrie/cowrie.json",
                        payload={"eventid": "cowrie.session.connect", "src_ip": ip},
                        session_id=sid,
                        event_type="cowrie.session.connect",
                        event_timestamp=T0,
                    )
                )
                conn.execute(
                    sa.update(sess_t)
                    .where(sess_t.c.session_id == bump)
                    .values(
                        event_count=sess_t.c.event_count + 1,
                        command_count=sess_t.c.command_count + 1,
                    )
                )


def ingest_during_backfill(
    ds: Dataset, knobs: Mapping[str, str], interval: float, test: str
) -> dict[str, Any]:
    url = ds.clone()
    engine = create_engine_from_url(url)
    with engine.connect() as conn:
        inventory = list(conn.execute(sa.text("SELECT ip_address FROM ip_inventory")).scalars())
    writer = Writer(url, sorted(ds.reference), inventory, interval, random.Random(SEED))
    thread = threading.Thread(target=writer.run)
    thread.start()
    wait_until("the writer's first sessions", lambda: len(writer.new) >= 3 or writer.errors)
    run = Alembic(url, "upgrade", "head", x=knobs)
    walk_seen_until = 0.0  # the last moment at which the walk was seen still running
    batches_from = batches_to = 0.0  # from just before the first batch, to after the last
    phases: set[str] = set()
    while run.running():
        asked = time.monotonic()
        phase = progress_state(engine, BACKFILL_JOB)[0]
        if phase in ("no-table", "no-row", WALK):
            walk_seen_until = asked
        if phase == "no-table":
            batches_from = asked
        if DONE not in phases:
            batches_to = time.monotonic()
        phases.add(phase)
        time.sleep(0.02)
    rc = run.wait()
    ended = time.monotonic()
    written = len(writer.new)  # sessions ingested after the run: the catch-up never saw them
    wait_until(
        "the writer's sessions after the run",
        lambda: len(writer.new) >= written + 3 or writer.errors,
    )
    writer.stop.set()
    thread.join(timeout=60)
    assert rc == 0, run.output
    assert not writer.errors, writer.errors[:5]
    assert WALK in phases, "the backfill was never seen walking"

    got = snapshots(engine)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(sess_t.c.session_id, sess_t.c.event_count)).all()
    counters = {str(sid): int(count) for sid, count in rows}
    engine.dispose()
    # the counters of existing sessions: every increment kept
    assert {sid: counters[sid] for sid in writer.bumps} == dict(writer.bumps)
    # the existing sessions: exactly what an undisturbed run gives them
    assert not differences({k: got[k] for k in ds.reference}, ds.reference)
    before_catchup = [n for n in writer.new if n[3] < walk_seen_until]
    for sid, ip, matchable, _at in before_catchup:
        if matchable:
            assert got[sid][0] == ip, f"new session {sid} ({ip}) was not caught up"
    for sid, _ip, matchable, _at in writer.new:
        if not matchable:
            assert got[sid] == NULLS, sid
    during = [n for n in writer.new if walk_seen_until <= n[3] < ended and n[2]]
    filled_during = sum(1 for sid, *_ in during if got[sid][0] is not None)
    # the writer's waits while the batches ran, and while the rest of the command ran
    # (on SQLite 0004 builds the indexes in one transaction: writers wait for all of it)
    # (every write whose wait overlaps the span: one that started just before the first
    # batch and waited through all of them is the worst one, not none)
    lat = sorted(t for at, t in writer.latencies if at <= batches_to and at + t >= batches_from)
    rest = [t for at, t in writer.latencies if at <= ended and at + t >= run.started]
    assert lat, "no write ran while the batches ran"
    figures = {
        "dialect": ds.dialect,
        "sessions": ds.sessions,
        "knobs": dict(knobs),
        "writer_transactions": len(writer.latencies),
        "writer_errors": len(writer.errors),
        "deadlocks": sum("deadlock" in e for e in writer.errors),
        "during_batches": len(lat),
        "p50_ms": round(1000 * statistics.median(lat), 1),
        "p99_ms": round(1000 * lat[max(0, int(0.99 * len(lat)) - 1)], 1),
        "max_ms": round(1000 * lat[-1], 1),
        "max_ms_whole_command": round(1000 * max(rest), 1),
        "new_matchable_before_catchup": sum(1 for n in before_catchup if n[2]),
        "new_matchable_during_catchup_or_0004": len(during),
        "of_which_filled": filled_during,
        "new_matchable_after_the_run": sum(1 for n in writer.new if n[3] >= ended and n[2]),
        "backfill_retries": int(run.output.split("retries: ")[1].split(",")[0]),
    }
    record(test, **figures)
    return figures


def test_concurrent_writer_sees_no_error_and_waits_under_a_second(mixed: Dataset) -> None:
    figures = ingest_during_backfill(
        mixed, {"batch_size": "200", "pause_ms": "10"}, 0.005, "concurrent ingestion"
    )
    assert figures["max_ms"] < 1000


@pytest.mark.slow
def test_concurrent_writer_at_the_default_batch_size(large: Dataset) -> None:
    """The figures for the default knobs, reported; and under a second with knobs for a
    busy database (fixed batches of 1000, a pause that lets SQLite's writers in: its busy
    handler is not a queue, and back-to-back batches can starve them)."""
    ingest_during_backfill(large, {}, 0.01, "concurrent ingestion (defaults)")
    busy = {"batch_size": "1000", "pause_ms": "10"}
    small = ingest_during_backfill(large, busy, 0.01, "concurrent ingestion (busy knobs)")
    assert small["max_ms"] < 1000


@pytest.mark.parametrize(
    "mixed", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
def test_concurrent_writer_beside_two_workers_waits_under_half_a_second(mixed: Dataset) -> None:
    """Two workers (PostgreSQL) lock two batches' rows at once; a writer that meets one
    of them waits for that batch only."""
    figures = ingest_during_backfill(
        mixed,
        {"batch_size": "200", "pause_ms": "10", "workers": "2"},
        0.005,
        "concurrent ingestion (2 workers)",
    )
    assert figures["max_ms"] < 500


@pytest.mark.parametrize(
    "mixed", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
def test_concurrent_writer_beside_a_walk_by_blocks(mixed: Dataset) -> None:
    """Walking by blocks, two workers: the writer's updates move existing sessions (a new
    row version, perhaps on a block the walk has passed) and its inserts land wherever
    there is room; every existing session still gets exactly what an undisturbed run
    gives it, every new one inserted before the catch-up is caught up, and no write
    waits half a second."""
    figures = ingest_during_backfill(
        mixed,
        {"batch_size": "200", "pause_ms": "10", "workers": "2", "walk_order": "blocks"},
        0.005,
        "concurrent ingestion (2 workers, walk_order=blocks)",
    )
    assert figures["max_ms"] < 500
