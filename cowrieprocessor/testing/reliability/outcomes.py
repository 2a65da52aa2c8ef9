"""What a run left behind, compared with the uninterrupted run over the same data."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from cowrieprocessor.backfill import BACKFILL_JOB
from cowrieprocessor.backfill.progress import WALK
from cowrieprocessor.db import adoption
from cowrieprocessor.testing.runners import progress_state
from cowrieprocessor.testing.seed import snapshots

BEFORE = "0002_snapshot_columns"
BACKFILL = "0003_backfill_session_snapshots"
HEAD = "0004_snapshot_indexes"
SNAPSHOT_INDEXES = frozenset(adoption.SNAPSHOT_INDEXES)
NULLS = (None,) * 5

Snaps = dict[str, tuple[Any, ...]]


def differences(got: Snaps, want: Snaps) -> list[str]:
    """The session ids whose five snapshot columns differ (or that only one side has)."""
    return sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))


def snapshot_indexes(engine: sa.Engine) -> set[str]:
    """Which of 0004's indexes ``session_summaries`` has."""
    names = {str(ix["name"]) for ix in sa.inspect(engine).get_indexes("session_summaries")}
    return names & SNAPSHOT_INDEXES


def invalid_indexes(engine: sa.Engine) -> int:
    """PostgreSQL: how many indexes a failed ``CREATE INDEX CONCURRENTLY`` left INVALID."""
    if engine.dialect.name != "postgresql":
        return 0
    with engine.connect() as conn:
        return int(
            conn.execute(sa.text("SELECT count(*) FROM pg_index WHERE NOT indisvalid")).scalar_one()
        )


def assert_only_whole_ranges_committed(engine: sa.Engine, reference: Snaps) -> int:
    """Nothing half-written: keys up to the saved position hold the reference values,
    keys after it hold none. Returns how many rows were committed."""
    phase, last_key, _batches = progress_state(engine, BACKFILL_JOB)
    assert phase == WALK, f"expected a walk stopped part way, found {phase!r}"
    got = snapshots(engine)
    for key, snap in got.items():
        if last_key is not None and key <= last_key:
            assert snap == reference[key], key
        else:
            assert snap == NULLS, key
    return sum(1 for key in got if last_key is not None and key <= last_key)
