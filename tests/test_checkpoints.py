"""The checkpoints a backfill's WAL forces are counted and, when too frequent, named with
the setting to raise (:mod:`cowrieprocessor.backfill.checkpoints`).

On a server whose WAL a small backfill fills again and again, as 5M sessions fill 4GB
(``small_wal_databases`` in tests/conftest.py); then on the test server, where it does not.
"""

from __future__ import annotations

import logging

import pytest

from cowrieprocessor.backfill import BackfillKnobs, run_backfill
from cowrieprocessor.backfill.jobs import BackfillResult
from cowrieprocessor.db.engine import create_engine_from_url
from cowrieprocessor.testing.databases import Databases
from cowrieprocessor.testing.oracle import current_snapshots, expected_snapshots
from cowrieprocessor.testing.seed import random_at_0002, read

pytestmark = pytest.mark.postgres

SESSIONS, IPS = 60_000, 7_500


def seeded(dbs: Databases) -> str:
    url = dbs.new()
    random_at_0002(url, SESSIONS, IPS, seed=5)
    return url


def backfill(
    url: str, caplog: pytest.LogCaptureFixture
) -> tuple[BackfillResult, list[str], list[str]]:
    knobs = BackfillKnobs.from_sources({"batch_size": "500", "log_interval": "0"}, {})
    engine = create_engine_from_url(url)
    try:
        with caplog.at_level(logging.INFO, logger="cowrieprocessor.backfill"):
            result = run_backfill(engine, knobs)
    finally:
        engine.dispose()
    lines = [r.getMessage() for r in caplog.records]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    return result, lines, warnings


def test_checkpoints_forced_by_the_backfill_are_named_with_the_setting_to_raise(
    small_wal_databases: Databases, caplog: pytest.LogCaptureFixture
) -> None:
    url = seeded(small_wal_databases)
    want = read(url, expected_snapshots)
    result, lines, warnings = backfill(url, caplog)
    counted = result.checkpoints_requested
    assert counted is not None and counted.requested >= 2, counted
    assert counted.max_wal_size == "32MB"
    summary = [line for line in lines if line.startswith("Checkpoints requested while it ran: ")]
    assert summary == [f"Checkpoints requested while it ran: {counted.describe()}"]
    assert f"one every {counted.every:.1f} s (max_wal_size 32MB)" in summary[0]
    named = [w for w in warnings if "checkpoint every" in w]
    assert len(named) == 1, warnings
    assert "max_wal_size (32MB)" in named[0] and "ALTER SYSTEM SET max_wal_size" in named[0]
    assert read(url, current_snapshots) == want  # counted, and nothing else changed


def test_a_backfill_that_forces_no_checkpoint_is_not_warned(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    random_at_0002(pg_url, 2_000, 300, seed=5)
    result, lines, warnings = backfill(pg_url, caplog)
    counted = result.checkpoints_requested
    assert counted is not None and not counted.too_frequent, counted
    assert any(line.startswith("Checkpoints requested while it ran: ") for line in lines)
    assert not [w for w in warnings if "checkpoint every" in w], warnings
