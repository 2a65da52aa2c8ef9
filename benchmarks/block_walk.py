"""A walk order the product does not have: by blocks of the table instead of by key
(docs/performance.md, "Checkpoints at 5M"). A measurement of the lead, not the product.

Two processes walk the table, each one half of it, with the product's own batch
statement (:func:`cowrieprocessor.backfill.sql.resolve_pg.pg_resolve`, the ctid join-back,
the NULL-only ``SET``), without its rollback record and progress rows, in one of two
orders:

- ``key``: ranges of about 5,800 session ids, as the product's walk does (its batches
  hold 5,835 rows at the median at 5M);
- ``blocks:K``: ranges of table blocks, each walked K times, every time only the
  sessions with ``hashtext(session_id) & (K-1)`` equal to the round (``K`` a power of
  two), the rounds of two neighbouring ranges interleaved. A batch then holds about as
  many rows as one of ``key``, but a page is changed K times within a few seconds
  instead of about 17 times over the whole walk: after a checkpoint its whole image goes
  to the WAL once, not at almost every change. The rounds leave each page room for HOT
  updates (the previous round's old versions are dead once it commits), and the
  interleaving lets the other process's transaction end before a page is changed again,
  so that they can be pruned.

After each walk: seconds, WAL bytes and full-page images (``pg_stat_wal``),
checkpoints, updates and how many were HOT, the heap's size, the slowest batch. One
JSON line a walk.

Run: ``python -m benchmarks.block_walk [--sessions N] [--ips N] [--shape current|field]
[--orders key,blocks:16,...]`` (a server of its own, tuned like the benchmarks'; about
2 minutes a walk at 5M on our schema, 5 on the field's, plus building the data).
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy import text

from benchmarks.datasets import PostgresData, build
from benchmarks.run import tuned_pg_settings
from cowrieprocessor.backfill import json_storage
from cowrieprocessor.backfill.sql.resolve_pg import JOIN_BACK, pg_resolve
from cowrieprocessor.backfill.sql.rules import NEEDS_SNAPSHOT, SET_NULL_ONLY, WOULD_CHANGE
from cowrieprocessor.testing.ephemeral_pg import EphemeralPostgres

BATCH_ROWS = 5_800
BY_KEY = "s.session_id > :lo AND s.session_id <= :hi"
BY_BLOCK = (
    "s.ctid >= CAST(:lo AS tid) AND s.ctid < CAST(:hi AS tid) "
    "AND (hashtext(s.session_id) & :mask) = :round"
)
SERVER = text(
    "SELECT (SELECT wal_fpi FROM pg_stat_wal), (SELECT wal_bytes FROM pg_stat_wal), "
    "(SELECT checkpoints_req + checkpoints_timed FROM pg_stat_bgwriter)"
)
TABLE = text(
    "SELECT n_tup_upd, n_tup_hot_upd, pg_relation_size('session_summaries') "
    "FROM pg_stat_user_tables WHERE relname = 'session_summaries'"
)


def statement(conn: sa.Connection, range_sql: str) -> sa.TextClause:
    """The product's batch statement over ``range_sql``, without its record."""
    resolve = pg_resolve(json_storage.detect(conn), range_sql, NEEDS_SNAPSHOT)
    sql = f"""{resolve},
upd AS (UPDATE session_summaries AS s SET {SET_NULL_ONLY} FROM matched m
    WHERE {JOIN_BACK} AND {WOULD_CHANGE} RETURNING 1)
SELECT (SELECT count(*) FROM upd)"""  # noqa: S608 - the product's fixed fragments, values bound
    return text(sql)


def walk(url: str, range_sql: str, batches: list[dict[str, Any]], out: Any) -> None:
    """One process: its batches in order, each committed; (rows updated, slowest)."""
    engine = sa.create_engine(url)
    updated, slowest = 0, 0.0
    with engine.connect() as conn:
        stmt = statement(conn, range_sql)
        conn.commit()
        for params in batches:
            started = time.monotonic()
            updated += int(conn.execute(stmt, params).scalar_one())
            conn.commit()
            slowest = max(slowest, time.monotonic() - started)
    engine.dispose()
    out.put((updated, slowest))


def key_halves(conn: sa.Connection) -> list[list[dict[str, Any]]]:
    bounds = [
        str(k)
        for k in conn.execute(
            text(
                "SELECT session_id FROM (SELECT session_id, row_number() OVER "
                "(ORDER BY session_id) AS n FROM session_summaries) x WHERE n % :rows = 0"
            ),
            {"rows": BATCH_ROWS},
        ).scalars()
    ]
    edges: list[str | None] = [None, *bounds, None]
    batches = [{"lo": lo or "", "hi": hi or "\U0010ffff"} for lo, hi in itertools.pairwise(edges)]
    half = len(batches) // 2
    return [batches[:half], batches[half:]]


def block_halves(conn: sa.Connection, rounds: int) -> list[list[dict[str, Any]]]:
    pages, rows = conn.execute(
        text("SELECT relpages, reltuples FROM pg_class WHERE relname = 'session_summaries'")
    ).one()
    step = max(1, int(BATCH_ROWS * rounds / (rows / pages)))
    ranges = [(lo, lo + step) for lo in range(0, int(pages) + 1, step)]
    ranges[-1] = (ranges[-1][0], 2**31 - 1)  # and whatever lies past the last page

    def batches(part: list[tuple[int, int]]) -> list[dict[str, Any]]:
        out = []
        for i in range(0, len(part), 2):  # two neighbouring ranges, rounds interleaved
            out += [
                {"lo": f"({lo},0)", "hi": f"({hi},0)", "mask": rounds - 1, "round": r}
                for r in range(rounds)
                for lo, hi in part[i : i + 2]
            ]
        return out

    half = len(ranges) // 2
    return [batches(ranges[:half]), batches(ranges[half:])]


def measure_walk(admin: sa.Engine, url: str, order: str) -> dict[str, Any]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        if order == "key":
            range_sql, halves = BY_KEY, key_halves(conn)
        else:
            rounds = int(order.partition(":")[2])
            if rounds < 1 or rounds & (rounds - 1):
                raise SystemExit(f"{order}: the rounds must be a power of two")
            range_sql, halves = BY_BLOCK, block_halves(conn, rounds)
        table0 = conn.execute(TABLE).one()
    with admin.connect() as conn:
        conn.execute(text("CHECKPOINT"))
        server0 = conn.execute(SERVER).one()
    out: Any = multiprocessing.Queue()
    started = time.monotonic()
    procs = [
        multiprocessing.Process(target=walk, args=(url, range_sql, half, out)) for half in halves
    ]
    for proc in procs:
        proc.start()
    done = [out.get() for _ in procs]
    for proc in procs:
        proc.join()
    seconds = time.monotonic() - started
    with admin.connect() as conn:
        server1 = conn.execute(SERVER).one()
    time.sleep(1)  # the statistics of the last commits
    with engine.connect() as conn:
        table1 = conn.execute(TABLE).one()
    engine.dispose()
    return {
        "order": order,
        "seconds": round(seconds, 1),
        "updated": sum(n for n, _ in done),
        "batches": sum(len(h) for h in halves),
        "batch_max": round(max(s for _, s in done), 2),
        "wal_bytes": int(server1[1] - server0[1]),
        "full_page_images": int(server1[0] - server0[0]),
        "checkpoints": int(server1[2] - server0[2]),
        "updates": int(table1[0] - table0[0]),
        "hot_updates": int(table1[1] - table0[1]),
        "heap_bytes": int(table1[2]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=5_000_000)
    parser.add_argument("--ips", type=int, default=892_857)
    parser.add_argument("--shape", choices=("current", "field"), default="current")
    parser.add_argument("--orders", default="key,blocks:16,key,blocks:16")
    args = parser.parse_args(argv)
    with EphemeralPostgres(durable=True, extra_settings=tuned_pg_settings()) as server:
        data = PostgresData(server.url, "block_walk_template")
        template = data.create_template()
        built = build("postgresql", template, args.sessions, args.ips, 1, args.shape)
        print(json.dumps({"step": "dataset", "shape": args.shape, **built}), flush=True)
        admin = sa.create_engine(server.url, isolation_level="AUTOCOMMIT")
        for n, order in enumerate(args.orders.split(",")):
            url = data.copy(f"block_walk_{n}")
            print(json.dumps(measure_walk(admin, url, order)), flush=True)
            data.drop(f"block_walk_{n}")
        admin.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
