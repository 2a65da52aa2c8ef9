"""Where a backfill's time goes, statement by statement, seen from the client.

Runs the backfill engine in-process (``run_backfill``, as revision 0003 does, without
Alembic) on a database at ``0002_snapshot_columns`` (give it a fresh copy: it writes),
and times every statement it sends, and every commit, by their kind: the batch
statement, the next range's bound, the health read, the progress save, ``set_config``,
the counts before the walk. Times include the round trip. Prints one JSON line (the
totals) and a table, largest first; docs/performance.md, "Where a batch's time goes",
was measured with it.

    python -m benchmarks.profile URL [knob=value ...]
"""

from __future__ import annotations

import collections
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import default

from cowrieprocessor.backfill import BackfillKnobs, BatchReport, run_backfill
from cowrieprocessor.db.engine import create_engine_from_url

KINDS = (  # (what the statement contains, its name), first match wins
    ("UPDATE session_summaries AS s SET", "batch statement"),
    ("set_config('lock_timeout'", "set_config"),
    ("ORDER BY session_id LIMIT 1 OFFSET", "next bound"),
    ("pg_wal_lsn_diff", "health read"),
    ("UPDATE cowrie_backfill_progress", "progress save"),
    ("INSERT INTO cowrie_backfill_progress", "progress insert"),
)


def kind(statement: str) -> str:
    for marker, name in KINDS:
        if marker in statement:
            return name
    return " ".join(statement.split())[:40]


def profile(url: str, knobs: BackfillKnobs) -> tuple[dict[str, Any], dict[str, list[float]]]:
    engine = create_engine_from_url(url, application_name="cowrie-bench-profile")
    spent: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
    started_at: list[float] = [0.0]

    @event.listens_for(engine, "before_cursor_execute")
    def before(*_args: Any) -> None:
        started_at[0] = time.perf_counter()

    @event.listens_for(engine, "after_cursor_execute")
    def after(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        entry = spent[kind(statement)]
        entry[0] += time.perf_counter() - started_at[0]
        entry[1] += 1

    # Commits have no "after" event: time the dialect's own commit while this runs.
    commit: Callable[[default.DefaultDialect, Any], None] = default.DefaultDialect.do_commit

    def timed_commit(self: default.DefaultDialect, dbapi_connection: Any) -> None:
        began = time.perf_counter()
        commit(self, dbapi_connection)
        entry = spent["COMMIT"]
        entry[0] += time.perf_counter() - began
        entry[1] += 1

    walk: list[float] = []
    walk_end = [0.0]
    began = time.perf_counter()

    def on_batch(report: BatchReport) -> None:
        if report.phase == "walk":
            walk.append(report.seconds)
            walk_end[0] = time.perf_counter() - began

    default.DefaultDialect.do_commit = timed_commit  # type: ignore[method-assign]
    try:
        result = run_backfill(engine, knobs, on_batch=on_batch)
    finally:
        default.DefaultDialect.do_commit = commit  # type: ignore[method-assign]
        engine.dispose()
    total = time.perf_counter() - began
    totals = {
        "seconds": round(total, 2),
        "walk_seconds": round(walk_end[0], 2),
        "batches": result.batches,
        "walk_batches": len(walk),
        "walk_batch_seconds": round(sum(walk), 2),
        "client_other_seconds": round(total - sum(e[0] for e in spent.values()), 2),
    }
    return totals, dict(spent)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(__doc__)
        return 2
    url, settings = args[0], dict(a.split("=", 1) for a in args[1:])
    totals, spent = profile(url, BackfillKnobs.from_sources(settings, {}))
    print(json.dumps(totals))
    for name, (seconds, count) in sorted(spent.items(), key=lambda kv: -kv[1][0]):
        each = 1000 * seconds / max(count, 1)
        print(f"{name:42s} {seconds:8.2f} s {int(count):7d} x {each:8.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
