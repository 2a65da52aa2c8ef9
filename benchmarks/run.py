"""Benchmark the snapshot backfill at production scale: the product, the limit, upstream.

    python -m benchmarks.run --sessions 1680000 --ips 300000 [--dialects postgresql,sqlite]
                             [--repeat 3] [--scaling] [--upstream auto|always|never]
                             [--shapes current,field] [--record-cost [--walk-repeat N]]

For each dialect, size and shape it builds the production-shaped dataset once (shape
``current``: the real ``alembic upgrade 0002_snapshot_columns``; shape ``field``,
PostgreSQL only: the catalog upstream's schema code leaves, see benchmarks/datasets.py;
then ``cowrie-db demo-data``'s generator), and measures, each on a fresh copy of the
same data:

1. **product**: ``alembic upgrade head`` (the backfill revision and the index revision),
   as a deploy runs it;
2. **limit**: one unbatched ``UPDATE ... FROM ip_inventory`` with the same semantics,
   then the same indexes, plain (benchmarks/limit.py);
3. **upstream**: upstream's method re-implemented (benchmarks/upstream.py), on the
   ``current`` shape only;
4. with ``--record-cost``, **walk** and **walk-norecord**: the backfill engine alone,
   with and without its rollback record (benchmarks/walk.py); the report gives the
   ratio of their medians and the spread of the ratios of each pair.

The product is ``alembic upgrade head`` on every shape (on the field shape, with no
stamp: the product adopts the database itself). Product and limit alternate
``--repeat`` times, so that a burst of load from elsewhere hits both; the two walks
alternate ``--walk-repeat`` times the same way, each pair in the other order than the
last (ABBA), so a drift hits both alike. Medians are reported, every run is kept.
PostgreSQL is a throwaway cluster
(:class:`cowrieprocessor.testing.ephemeral_pg.EphemeralPostgres`, fsync on) configured as a
tuned production server for this machine (``--pg-stock`` for the stock settings), or an
existing server (``--pg-url``, where we may create databases).

Results: ``benchmarks/results/<time>.json`` (and ``latest.json``), and a Markdown summary
on stdout. ``python -m benchmarks.report`` and ``python -m benchmarks.plot`` turn result
files into docs/performance.md's table and plot.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from benchmarks import measure, report
from benchmarks.datasets import FIELD_DIALECTS, SHAPES, PostgresData, SqliteData
from benchmarks.summary import RECORD_COST, summarize
from cowrieprocessor.backfill.knobs import BackfillKnobs
from cowrieprocessor.settings import PROJECT_ROOT
from cowrieprocessor.testing.ephemeral_pg import EphemeralPostgres

RESULTS = PROJECT_ROOT / "benchmarks" / "results"
PRODUCTION = (1_680_000, 300_000)
SCALING = (100_000, 500_000, 1_680_000, 5_000_000)
UPSTREAM_AUTO_MAX = 1_680_000  # its cost grows with the square of the table
GIB = 1 << 30

Approach = Callable[[str, int], dict[str, Any]]
# the approaches run in turn within each repeat, in this order
PAIRED = (
    "product",
    "product-2w",
    "limit",
    "product-4w",
    "product-key",
    "product-2w-writer",
    "product-defer",
    "product-2w-defer",
    "product-blocks",
    "product-2w-blocks",
)
APPROACHES: dict[str, Approach] = {
    "product": measure.product,
    "limit": measure.limit,
    "product-key": measure.product_key,
    "product-2w": measure.product_2w,
    "product-2w-writer": measure.product_2w_writer,
    "product-4w": measure.product_4w,
    "product-defer": measure.product_defer,
    "product-2w-defer": measure.product_2w_defer,
    "product-blocks": measure.product_blocks,
    "product-2w-blocks": measure.product_2w_blocks,
    "upstream": measure.upstream,
    "walk": measure.walk,
    "walk-norecord": measure.walk_norecord,
}


def log(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def memory_bytes() -> int:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 4 * GIB


def tuned_pg_settings() -> dict[str, str]:
    """The usual production tuning for this machine's memory (as pgtune would suggest)."""
    mem = memory_bytes()
    mb = 1 << 20
    return {
        "shared_buffers": f"{min(mem // 4, 8 * GIB) // mb}MB",
        "effective_cache_size": f"{mem * 3 // 4 // mb}MB",
        "maintenance_work_mem": f"{min(mem // 16, 2 * GIB) // mb}MB",
        "work_mem": "16MB",
        "wal_buffers": "16MB",
        "min_wal_size": "1GB",
        "max_wal_size": "4GB",
        "checkpoint_completion_target": "0.9",
        "random_page_cost": "1.1",
    }


def source_commit() -> str:
    """The commit measured (``git rev-parse``), with ``+dirty`` when tracked files have
    changes not committed; ``unknown`` outside a git checkout (an unpacked wheel)."""
    git = ["git", "-C", str(PROJECT_ROOT)]
    try:
        head = subprocess.run(
            [*git, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}+dirty" if changed else head


def pg_overrides(given: list[str]) -> dict[str, str]:
    """``--pg-setting NAME=VALUE`` options as a dict; a name that is not a setting's name
    is refused (it goes to the server's command line)."""
    found: dict[str, str] = {}
    for item in given:
        name, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[a-z_][a-z0-9_.]*", name) or not value:
            raise SystemExit(f"--pg-setting {item!r}: expected NAME=VALUE, e.g. max_wal_size=16GB")
        found[name] = value
    return found


def machine(pg_url: str | None, overrides: dict[str, str] | None = None) -> dict[str, Any]:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "memory_gib": round(memory_bytes() / GIB, 1),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
    }
    if pg_url:
        engine = sa.create_engine(pg_url)
        try:
            with engine.connect() as conn:
                info["postgresql"] = conn.execute(sa.text("SHOW server_version")).scalar()
                names = (
                    *tuned_pg_settings(),
                    *(overrides or {}),
                    "fsync",
                    "synchronous_commit",
                    "jit",
                )
                info["postgresql_settings"] = {  # an override of a tuned setting: once
                    name: conn.execute(sa.text("SELECT current_setting(:n)"), {"n": name}).scalar()
                    for name in dict.fromkeys(names)
                }
        finally:
            engine.dispose()
    return info


def build_datasets(
    targets: dict[str, PostgresData | SqliteData],
    sessions: int,
    ips: int,
    seed: int,
    shape: str = "current",
) -> dict[str, Any]:
    """Generate every dialect's dataset at once, one process each (2 cores: in parallel)."""
    procs = {}
    for dialect, target in targets.items():
        url = target.create_template()
        cmd = [sys.executable, "-m", "benchmarks.datasets", dialect, url]
        cmd += [str(sessions), str(ips), str(seed), shape]
        procs[dialect] = subprocess.Popen(
            cmd,
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    built = {}
    for dialect, proc in procs.items():
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"building the {dialect} {shape} dataset failed:\n{err[-3000:]}")
        built[dialect] = json.loads(out.strip().splitlines()[-1])
    return built


def measure_one(
    target: PostgresData | SqliteData,
    approach: str,
    run: int,
    sessions: int,
    verify: bool,
) -> dict[str, Any]:
    name = f"bench_{approach}_{run}"
    url = target.copy(name)
    try:
        before = measure.load_average()
        result = APPROACHES[approach](url, sessions)
        result["load_average"] = [before, measure.load_average()]
        if verify:
            result["result"] = measure.digest(url)
    finally:
        target.drop(name)
    log(
        f"  {approach} #{run + 1}: {result['seconds']:.1f} s "
        f"({result['sessions_per_second']:,.0f} sessions/s), peak RSS "
        f"{result['max_rss_mb']:.0f} MB, load {result['load_average'][0]:.1f}"
        f"->{result['load_average'][1]:.1f}"
    )
    return result


def free_gib(path: Path) -> float:
    return shutil.disk_usage(path).free / GIB


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Benchmark the snapshot backfill: product vs limit vs upstream.",
    )
    parser.add_argument("--sessions", type=int, default=PRODUCTION[0])
    parser.add_argument("--ips", type=int, default=PRODUCTION[1])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dialects", default="postgresql,sqlite")
    parser.add_argument("--approaches", default="product,limit,upstream")
    parser.add_argument("--repeat", type=int, default=3, help="product/limit pairs per size")
    parser.add_argument(
        "--shapes",
        default="current",
        help="comma-separated: current (our schema at 0002), field (upstream's v17 "
        "catalog, PostgreSQL only)",
    )
    parser.add_argument(
        "--record-cost",
        action="store_true",
        help="also the backfill engine alone with and without its rollback record "
        "(approaches walk, walk-norecord)",
    )
    parser.add_argument(
        "--walk-repeat",
        type=int,
        help="walk / walk-norecord pairs per size and shape (default: --repeat)",
    )
    parser.add_argument("--upstream", choices=("auto", "always", "never"), default="auto")
    parser.add_argument("--upstream-repeat", type=int, default=1)
    parser.add_argument(
        "--upstream-dialects",
        default="postgresql,sqlite",
        help="where the upstream approach runs (its target is on PostgreSQL)",
    )
    parser.add_argument(
        "--scaling",
        action="store_true",
        help=f"also sizes {', '.join(f'{s:,}' for s in SCALING)} (IPs in proportion; "
        "5M only when the disk allows)",
    )
    parser.add_argument("--sizes", help="comma-separated session counts (overrides --scaling)")
    parser.add_argument("--no-verify", action="store_true", help="skip the result digests")
    parser.add_argument("--pg-url", help="an existing server (user may CREATE DATABASE)")
    parser.add_argument("--pg-stock", action="store_true", help="stock PostgreSQL settings")
    parser.add_argument(
        "--pg-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a server setting over the tuned (or stock) ones, e.g. max_wal_size=16GB; repeatable",
    )
    parser.add_argument("--workdir", help="where SQLite files go (default: a temp folder)")
    parser.add_argument("--label", default="", help="added to the result file name")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dialects = [d.strip() for d in args.dialects.split(",") if d.strip()]
    approaches = [a.strip() for a in args.approaches.split(",") if a.strip()]
    if args.record_cost:
        approaches += [a for a in RECORD_COST if a not in approaches]
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    walk_repeat = args.repeat if args.walk_repeat is None else args.walk_repeat
    upstream_dialects = [d.strip() for d in args.upstream_dialects.split(",") if d.strip()]
    unknown = (
        sorted(set(dialects + upstream_dialects) - {"postgresql", "sqlite"})
        + sorted(set(approaches) - set(APPROACHES))
        + sorted(set(shapes) - set(SHAPES))
    )
    if unknown:
        raise SystemExit(f"unknown dialect, approach or shape: {', '.join(unknown)}")
    if set(shapes) - {"current"} and not set(dialects) & set(FIELD_DIALECTS):
        raise SystemExit(
            f"the field and partitioned shapes need a dialect among {', '.join(FIELD_DIALECTS)}"
        )
    overrides = pg_overrides(args.pg_setting)
    ratio = args.ips / args.sessions
    if args.sizes:
        sizes = [int(s) for s in args.sizes.split(",")]
    elif args.scaling:
        sizes = sorted(set(SCALING) | {args.sessions})
    else:
        sizes = [args.sessions]

    args.out.mkdir(parents=True, exist_ok=True)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="cowrie-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    server: EphemeralPostgres | None = None
    pg_url = args.pg_url
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out_file = args.out / f"{stamp}{'-' + args.label if args.label else ''}.json"
    results: dict[str, Any] = {
        "started_at": stamp,
        "command": " ".join(["python -m benchmarks.run", *(argv or sys.argv[1:])]),
        "commit": source_commit(),
        "knobs": BackfillKnobs().as_dict(),
        "sizes": [],
    }
    try:
        if "postgresql" in dialects and not pg_url:
            settings = {} if args.pg_stock else tuned_pg_settings()
            settings |= overrides
            server = EphemeralPostgres(durable=True, extra_settings=settings)
            pg_url = server.start()
            log(
                f"PostgreSQL started ({'stock' if args.pg_stock else 'tuned'} settings"
                + "".join(f", {k}={v}" for k, v in overrides.items())
                + ")"
            )
        results["machine"] = machine(pg_url if "postgresql" in dialects else None, overrides)
        log(f"machine: {json.dumps(results['machine'])}")
        for sessions in sizes:
            ips = args.ips if sessions == args.sessions else max(10, round(sessions * ratio))
            need = sessions * 3.5 / 1e6  # GiB: template, copy and WAL per dialect, roughly
            if free_gib(workdir) < need * len(dialects) + 5:
                log(f"skipping {sessions:,} sessions: {free_gib(workdir):.0f} GiB free")
                continue
            for shape in shapes:
                shape_dialects = [d for d in dialects if shape == "current" or d in FIELD_DIALECTS]
                log(f"== {sessions:,} sessions, {ips:,} IPs, {shape} shape: generating")
                tpl = (
                    f"bench_tpl_{sessions}"
                    if shape == "current"
                    else f"bench_tpl_{shape}_{sessions}"
                )
                targets: dict[str, PostgresData | SqliteData] = {}
                for dialect in shape_dialects:
                    if dialect == "postgresql":
                        assert pg_url is not None
                        targets[dialect] = PostgresData(pg_url, tpl)
                    else:
                        targets[dialect] = SqliteData(workdir, tpl)
                started = time.monotonic()
                built = build_datasets(targets, sessions, ips, args.seed, shape)
                log(f"   datasets ready in {time.monotonic() - started:.0f} s: {built}")
                entry: dict[str, Any] = {
                    "sessions": sessions,
                    "ips": ips,
                    "shape": shape,
                    "dialects": {},
                }
                results["sizes"].append(entry)
                for dialect, target in targets.items():
                    log(f"-- {dialect}, {shape} shape, {sessions:,} sessions")
                    runs: dict[str, list[dict[str, Any]]] = {a: [] for a in approaches}

                    run_upstream = (
                        "upstream" in approaches
                        and dialect in upstream_dialects
                        and shape == "current"
                    ) and (
                        args.upstream == "always"
                        or (args.upstream == "auto" and sessions <= UPSTREAM_AUTO_MAX)
                    )
                    schedule = [
                        (a, i) for i in range(args.repeat) for a in PAIRED if a in approaches
                    ]
                    if all(a in approaches for a in RECORD_COST):
                        schedule += [  # ABBA: a drift hits both alike
                            (a, i)
                            for i in range(walk_repeat)
                            for a in RECORD_COST[:: 1 if i % 2 == 0 else -1]
                        ]
                    schedule += [
                        ("upstream", i) for i in range(args.upstream_repeat if run_upstream else 0)
                    ]
                    for approach, i in schedule:
                        runs[approach].append(
                            measure_one(target, approach, i, sessions, not args.no_verify)
                        )
                        # every run on disk as soon as measured: a summary that fails
                        # (or a killed benchmark) loses no measurement
                        entry["dialects"][dialect] = {"dataset": built[dialect], "runs": runs}
                        out_file.write_text(json.dumps(results, indent=1))
                    summary = summarize(runs)
                    entry["dialects"][dialect] = {
                        "dataset": built[dialect],
                        "summary": summary,
                        "runs": runs,
                    }
                    log(
                        f"   {dialect}, {shape}: ratios {summary['ratios']}, same result: "
                        f"{summary['same_result']}"
                    )
                    out_file.write_text(json.dumps(results, indent=1))
                    target.drop_template()
    finally:
        if server is not None:
            server.stop()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    results["finished_at"] = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out_file.write_text(json.dumps(results, indent=1))
    shutil.copyfile(out_file, args.out / "latest.json")
    print(report.markdown(results))
    cost = report.record_cost(results)
    if cost:
        print()
        print(cost)
    keyed = report.join_back(results)
    if keyed:
        print()
        print(keyed)
    log(f"results: {out_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
