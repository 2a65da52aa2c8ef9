"""The backfill engine alone, with or without its rollback record: what the record costs.

The product saves, in the same transaction as each batch, what that batch wrote (the
rollback record), and that must cost at most 5% of the walk. This runs only the
engine, as the backfill revision does but without Alembic and without revision 0004:

    run_backfill(create_engine_from_url(url), BackfillKnobs.from_sources({}), keep_record=...)

on a fresh copy of the dataset (still at ``0002_snapshot_columns``, or the field shape),
and prints one JSON line: the whole run's seconds (in-process, so interpreter start-up
and imports are left out), the walk phase's seconds (from the start to the last walk
batch) and the sum of the walk batches' own durations (their transactions, where the
record is written). benchmarks/run.py alternates the two variants (approaches ``walk``
and ``walk-norecord``) and reports the ratio record / no record.

Run on its own: ``python -m benchmarks.walk URL [--no-record]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from cowrieprocessor.backfill import BackfillKnobs, BatchReport, run_backfill
from cowrieprocessor.db.engine import create_engine_from_url


def run(url: str, *, record: bool) -> dict[str, Any]:
    engine = create_engine_from_url(url, application_name="cowrie-bench-walk")
    knobs = BackfillKnobs.from_sources({})
    walk_batches: list[float] = []
    walk_end = 0.0
    started = time.monotonic()

    def on_batch(report: BatchReport) -> None:
        nonlocal walk_end
        if report.phase == "walk":
            walk_batches.append(report.seconds)
            walk_end = time.monotonic() - started

    try:
        result = run_backfill(engine, knobs, keep_record=record, on_batch=on_batch)
    finally:
        engine.dispose()
    seconds = time.monotonic() - started
    return {
        "record": record,
        "seconds": seconds,
        "walk_seconds": walk_end,
        "walk_batch_seconds_sum": sum(walk_batches),
        "walk_batches": len(walk_batches),
        "batches": result.batches,
        "rows_updated": result.rows_updated,
        "retries": result.retries,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--no-record", action="store_true", help="keep_record=False")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.url, record=not args.no_record)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
