"""Health throttling on a real streaming standby (:mod:`cowrieprocessor.backfill.health`).

A primary and its standby (``pg_basebackup -R``, both throwaway; :mod:`tests.conftest`
``standby``). With replay paused on the standby, the backfill must stop committing once
the next batch's WAL would take the lag past ``max_replica_lag``, so that the lag never
passes it (but for the heartbeats written while held), carry on by itself once replay
resumes, and give the same result as a run without
throttling. ``max_wal_rate`` must keep the WAL written between batches under its limit.
The figures (peak lag, time throttled, WAL rate) are published for docs/reliability.md.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from cowrieprocessor.backfill import BACKFILL_JOB, BackfillKnobs, BatchReport, run_backfill
from cowrieprocessor.backfill.control import THROTTLED, running_job
from cowrieprocessor.backfill.health import HIDDEN_STANDBY_WARNING
from cowrieprocessor.db.engine import create_engine_from_url
from cowrieprocessor.testing.databases import Databases
from cowrieprocessor.testing.oracle import current_snapshots, expected_snapshots
from cowrieprocessor.testing.reliability.figures import record
from cowrieprocessor.testing.runners import wait_for_heartbeats, wait_until
from cowrieprocessor.testing.seed import random_at_0002, read
from cowrieprocessor.testing.standby import StreamingStandby, replica_lag_bytes

MB = 1024 * 1024
SESSIONS, IPS = 12_000, 1_500
# WAL that is not the batches': the heartbeats written while waiting (about one a
# second, a few hundred bytes each) and whatever the server writes on its own
BACKGROUND_WAL = 256 * 1024


@pytest.fixture
def primary_databases(standby: StreamingStandby, tmp_path: Path) -> Iterator[Databases]:
    dbs = Databases("postgresql", tmp_path, standby.primary.url)
    try:
        yield dbs
    finally:
        dbs.close()


def seeded(dbs: Databases) -> str:
    url = dbs.new()
    random_at_0002(url, SESSIONS, IPS, seed=11)
    return url


def wal_lsn(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')")
            ).scalar_one()
        )


class BatchWal:
    """After each committed batch: the primary's WAL position and the time (the test's
    own readings, on a connection of its own)."""

    def __init__(self, url: str) -> None:
        self.engine = create_engine_from_url(url)
        self.points: list[tuple[float, int]] = []

    def __call__(self, _report: BatchReport) -> None:
        self.points.append((time.monotonic(), wal_lsn(self.engine)))

    def largest(self) -> int:
        steps = [b - a for (_t, a), (_u, b) in zip(self.points, self.points[1:], strict=False)]
        return max(steps, default=0)


class LagWatch(threading.Thread):
    """Polls the replica lag on the primary every 20 ms; keeps the peak."""

    def __init__(self, primary_url: str) -> None:
        super().__init__(daemon=True)
        self.primary_url = primary_url
        self.peak = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            lag = replica_lag_bytes(self.primary_url)
            if lag is not None:
                self.peak = max(self.peak, lag)
            self.halt.wait(0.02)


def test_replica_lag_holds_the_backfill_until_replay_resumes(
    standby: StreamingStandby, primary_databases: Databases
) -> None:
    url = seeded(primary_databases)
    want = read(url, expected_snapshots)
    standby.wait_caught_up()
    limit = 1 * MB
    knobs = BackfillKnobs.from_sources(
        {"batch_size": "300", "max_replica_lag": str(limit), "log_interval": "0"}, {}
    )
    engine = create_engine_from_url(url)
    wal = BatchWal(url)
    watch = LagWatch(standby.primary.url)
    outcome: dict[str, Any] = {}

    def backfill() -> None:
        try:
            outcome["result"] = run_backfill(engine, knobs, on_batch=wal)
        except BaseException as exc:  # reported by the test thread
            outcome["error"] = exc

    standby.pause_replay()
    watch.start()
    runner = threading.Thread(target=backfill, daemon=True)
    runner.start()
    try:
        with engine.connect() as conn:

            def throttled() -> bool:
                job = running_job(conn)
                return job is not None and job.run_state == THROTTLED

            wait_until("the backfill to be throttled", throttled)
        held_at = len(wal.points)
        lag_when_held = replica_lag_bytes(standby.primary.url)
        # replay still paused: the run looks at the lag three more times, commits nothing
        wait_for_heartbeats(engine, BACKFILL_JOB, 3)
        assert len(wal.points) == held_at, "a batch committed while the standby was behind"
        assert runner.is_alive()
    finally:
        standby.resume_replay()
    runner.join(timeout=120)
    watch.halt.set()
    watch.join()
    engine.dispose()
    wal.engine.dispose()
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    waits = result.waits["replica_lag"]
    largest_batch = wal.largest()
    record(
        "test_replica_lag_holds_the_backfill_until_replay_resumes",
        sessions=SESSIONS,
        max_replica_lag=limit,
        peak_lag=watch.peak,
        lag_when_held=lag_when_held,
        largest_batch_wal=largest_batch,
        waits=int(waits["waits"]),
        seconds_throttled=waits["seconds"],
        batches=result.batches,
    )
    assert waits["waits"] >= 1 and waits["seconds"] >= 3.0
    # The limit holds: the batch that would pass it waits (the heartbeats written while
    # held are the only WAL past it); it used to be passed by up to one batch's WAL.
    assert watch.peak <= limit + BACKGROUND_WAL, (watch.peak, largest_batch)
    assert read(url, current_snapshots) == want  # identical to what an unthrottled run writes


def test_max_wal_rate_spaces_the_batches(
    standby: StreamingStandby, primary_databases: Databases
) -> None:
    url = seeded(primary_databases)
    want = read(url, expected_snapshots)
    rate = 1 * MB
    knobs = BackfillKnobs.from_sources(
        {"batch_size": "300", "max_wal_rate": f"{rate // 1024}kB/s", "max_replica_lag": "0"}, {}
    )
    engine = create_engine_from_url(url)
    wal = BatchWal(url)
    result = run_backfill(engine, knobs, on_batch=wal)
    engine.dispose()
    wal.engine.dispose()
    (t0, lsn0), (t1, lsn1) = wal.points[0], wal.points[-1]
    measured = (lsn1 - lsn0) / (t1 - t0)
    record(
        "test_max_wal_rate_spaces_the_batches",
        sessions=SESSIONS,
        max_wal_rate=rate,
        measured_rate=round(measured),
        engine_wal_bytes=result.wal_bytes,
        engine_seconds=result.wal_seconds,
        waits=int(result.waits["wal_rate"]["waits"]),
        seconds_spaced=result.waits["wal_rate"]["seconds"],
        batches=result.batches,
        largest_batch_wal=wal.largest(),
    )
    assert result.waits["wal_rate"]["waits"] >= 1
    # Between the first and the last commit the WAL stays under the rate, give or take
    # the last batch's (written after the last look) and the background's. Slowness
    # can only lower the rate: this cannot fail on a busy machine.
    assert lsn1 - lsn0 <= rate * (t1 - t0) + wal.largest() + BACKGROUND_WAL
    assert read(url, current_snapshots) == want


def test_a_role_that_cannot_see_the_standbys_is_warned_once_and_not_held(
    standby: StreamingStandby, primary_databases: Databases, caplog: pytest.LogCaptureFixture
) -> None:
    url = seeded(primary_databases)
    want = read(url, expected_snapshots)
    role = "cowrie_plain"
    with primary_databases.admin.connect() as admin:  # type: ignore[union-attr]
        admin.execute(sa.text(f"DROP ROLE IF EXISTS {role}"))
        admin.execute(sa.text(f"CREATE ROLE {role} LOGIN"))
    database = sa.make_url(url).database
    owner = create_engine_from_url(url)
    with owner.begin() as conn:
        conn.execute(sa.text(f'GRANT ALL ON DATABASE "{database}" TO {role}'))
        conn.execute(sa.text(f"GRANT ALL ON SCHEMA public TO {role}"))
        conn.execute(sa.text(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}"))
    with owner.connect() as conn:  # the owner's statistics: this role may not ANALYZE
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(sa.text("ANALYZE"))
    owner.dispose()
    plain = sa.make_url(url).set(username=role)
    standby.pause_replay()
    try:
        # a lag over the limit would hold the run forever: it must not see it, and say so
        lag_before = replica_lag_bytes(standby.primary.url)
        engine = create_engine_from_url(plain)
        knobs = BackfillKnobs.from_sources({"batch_size": "2000", "max_replica_lag": "1kB"}, {})
        with caplog.at_level(logging.WARNING, logger="cowrieprocessor.backfill"):
            result = run_backfill(engine, knobs)
        engine.dispose()
        lag_after = replica_lag_bytes(standby.primary.url)
    finally:
        standby.resume_replay()
    warnings = [r.getMessage() for r in caplog.records if r.getMessage() == HIDDEN_STANDBY_WARNING]
    assert len(warnings) == 1
    assert "replica_lag" not in result.waits
    assert lag_after is not None and lag_before is not None and lag_after > 1024
    assert read(url, current_snapshots) == want
