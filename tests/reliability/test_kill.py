"""``kill -9`` of the ``alembic`` command at random moments: a rerun matches an
uninterrupted run, row for row, after the upgrade and after the downgrade."""

from __future__ import annotations

import pytest

from cowrieprocessor.backfill import CLEAR_JOB
from cowrieprocessor.db.engine import create_engine_from_url
from cowrieprocessor.testing.reliability.datasets import Dataset
from cowrieprocessor.testing.reliability.kills import kill_trials
from cowrieprocessor.testing.reliability.outcomes import BACKFILL, BEFORE, differences
from cowrieprocessor.testing.runners import Alembic, run_alembic
from cowrieprocessor.testing.seed import migrate, snapshots, version


def test_kill_9_at_random_moments_then_rerun_matches_an_uninterrupted_run(mixed: Dataset) -> None:
    kill_trials(mixed, trials=3, max_kills=1, test="kill-9 (default suite)")


def test_kill_9_on_partitioned_tables_and_by_key_matches_plain_tables(
    scaled_out: Dataset,
) -> None:
    """The same trials on a partitioned session_summaries (a kill lands in any
    partition) and with the join-back by key; the reference is the plain tables' run."""
    kill_trials(scaled_out, trials=3, max_kills=1, test="kill-9 (partitions, join_back=key)")


def test_kill_9_walking_by_blocks_matches_an_uninterrupted_run(mixed: Dataset) -> None:
    """The same trials walking by blocks (1, 2 and 4 workers): a kill lands in a round of
    a segment, and the rerun goes on by blocks from the saved cell."""
    if mixed.dialect != "postgresql":
        pytest.skip("SQLite refuses walk_order=blocks (tests/test_blocks.py)")
    blocks = {"walk_order": "blocks"}
    kill_trials(mixed, trials=3, max_kills=1, test="kill-9 (walk_order=blocks)", knobs=blocks)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_kill_9_trials_at_scale(large: Dataset) -> None:
    kill_trials(large, trials=10, max_kills=3, test="kill-9 (slow)")


def test_upgrade_after_an_interrupted_downgrade_restores_every_snapshot(
    sqlite_small: Dataset,
) -> None:
    url = sqlite_small.clone()
    migrate(url, "head")
    engine = create_engine_from_url(url)
    run = Alembic(url, "downgrade", BEFORE, x={"batch_size": "100", "pause_ms": "20"})
    assert run.kill_after(engine, CLEAR_JOB, 5)
    assert version(engine) == BACKFILL  # the clear stopped half way: 0003 stays applied
    out = run_alembic(url, "upgrade", "head")
    assert out.returncode == 0, out.stderr
    assert "an interrupted downgrade left snapshot columns partly cleared" in out.stderr
    lost = differences(snapshots(engine), sqlite_small.reference)
    engine.dispose()
    assert not lost, f"{len(lost)} sessions at head without their snapshots"
