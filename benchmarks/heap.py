"""The heap the backfill leaves, and what 0004 then takes (docs/performance.md, "Where
the time goes"): on our schema at ``--sessions``, alternated, the limit (its ``UPDATE``
and its index steps), one worker and two workers (``alembic upgrade 0003`` with
``-x workers=N``, then ``alembic upgrade head`` as a command of its own). After each
step: ``session_summaries``'s heap and total size, live and dead tuples, its updates
(and how many were HOT), the sessions still without ``source_ip``. One JSON line a step.

Run: ``python -m benchmarks.heap [--sessions N] [--ips N] [--rounds N]`` (a server of
its own, tuned like the benchmarks'; about 10 minutes at 1.68M on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import sqlalchemy as sa

from benchmarks import measure
from benchmarks.datasets import PostgresData, alembic, build
from benchmarks.run import tuned_pg_settings
from cowrieprocessor.testing.ephemeral_pg import EphemeralPostgres

TABLE_STATE = sa.text(
    "SELECT pg_relation_size('session_summaries'), pg_total_relation_size('session_summaries'), "
    "n_live_tup, n_dead_tup, n_tup_upd, n_tup_hot_upd, "
    "(SELECT count(*) FROM session_summaries WHERE source_ip IS NULL) "
    "FROM pg_stat_user_tables WHERE relname = 'session_summaries'"
)
STATE_KEYS = (
    "heap_bytes",
    "total_bytes",
    "live_tuples",
    "dead_tuples",
    "updates",
    "hot_updates",  # updated in place: no index entry written, no page added
    "without_source_ip",
)


def table_state(url: str) -> dict[str, int]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return dict(zip(STATE_KEYS, map(int, conn.execute(TABLE_STATE).one()), strict=True))
    finally:
        engine.dispose()


def timed(command: list[str]) -> float:
    """Run ``command`` (:func:`measure.run_measured`); its wall time. A failure stops the
    measurement with its stderr."""
    done = measure.run_measured(command)
    if done.returncode != 0:
        raise SystemExit(f"{command[:4]} failed:\n{done.stderr[-2000:]}")
    return round(done.seconds, 1)


def report(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=1_680_000)
    parser.add_argument("--ips", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    with EphemeralPostgres(durable=True, extra_settings=tuned_pg_settings()) as server:
        data = PostgresData(server.url, "heap_template")
        template = data.create_template()
        built = build("postgresql", template, args.sessions, args.ips, 1, "current")
        report(step="dataset", **built, **table_state(template))
        for n in range(1, args.rounds + 1):
            for approach in ("limit", "1 worker", "2 workers"):
                name = f"heap_{n}_{approach[0]}"
                url = data.copy(name)
                if approach == "limit":
                    seconds = timed([sys.executable, "-m", "benchmarks.limit", url])
                    report(
                        round=n, approach=approach, step="all", seconds=seconds, **table_state(url)
                    )
                else:
                    workers = {"workers": approach[0]}
                    walk = alembic(
                        url, "upgrade", "0003_backfill_session_snapshots", extra_x=workers
                    )
                    report(
                        round=n,
                        approach=approach,
                        step="0003",
                        seconds=timed(walk),
                        **table_state(url),
                    )
                    head = alembic(url, "upgrade", "head")
                    report(
                        round=n,
                        approach=approach,
                        step="0004",
                        seconds=timed(head),
                        **table_state(url),
                    )
                data.drop(name)
        data.drop_template()
    return 0


if __name__ == "__main__":
    sys.exit(main())
