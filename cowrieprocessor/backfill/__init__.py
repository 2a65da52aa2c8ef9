"""The snapshot backfill: one engine behind the Alembic revision and the CLI."""

from cowrieprocessor.backfill.engine import (
    BACKFILL_JOB,
    CLEAR_ALL_JOB,
    CLEAR_JOB,
    BackfillError,
    BackfillInterrupted,
    BackfillResult,
    BatchFailed,
    BatchReport,
    ClearResult,
    clear_snapshots,
    engine_for_bind,
    run_backfill,
    undo_backfill,
)
from cowrieprocessor.backfill.knobs import BackfillKnobs, KnobError

__all__ = [
    "BACKFILL_JOB",
    "CLEAR_ALL_JOB",
    "CLEAR_JOB",
    "BackfillError",
    "BackfillInterrupted",
    "BackfillKnobs",
    "BackfillResult",
    "BatchFailed",
    "BatchReport",
    "ClearResult",
    "KnobError",
    "clear_snapshots",
    "engine_for_bind",
    "run_backfill",
    "undo_backfill",
]
