"""Run one approach as a child process and measure it from the outside.

Every approach runs in a process of its own, so that its wall time, its peak resident
memory (``ru_maxrss`` from ``os.wait4`` on that very child) and the arrival time of
each line it logs are taken the same way:

* the product is the real ``alembic upgrade head`` from ``0002_snapshot_columns``,
  with ``-x log_interval=0`` so that the backfill logs one line per committed batch,
  with that batch's duration as the engine measured it (its transaction, retries
  included). The first such line marks the first committed batch;
* the limit and the upstream approach are ``python -m benchmarks.limit`` and
  ``python -m benchmarks.upstream``, which print their own step times as JSON;
* the record cost pair (``walk``, ``walk-norecord``) is ``python -m benchmarks.walk``:
  the backfill engine alone, with and without its rollback record.

A digest of the five snapshot columns of every session is computed after each run
(outside the timing), so the report can say that all approaches ended with the same
data.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from benchmarks.datasets import alembic, clean_env
from cowrieprocessor.backfill.progress import percentile
from cowrieprocessor.db.engine import create_engine_from_url
from cowrieprocessor.settings import PROJECT_ROOT

BATCH_LINE = re.compile(
    r"snapshot_backfill(?:/\d+)? (?P<phase>walk|catchup): .*; batch (?P<batch>\d+): "
    r"(?:(?P<rows>\d+) rows|the last range) in (?P<seconds>[\d.]+) s"
)
REBUILT_LINE = re.compile(r"defer_indexes: rebuilt .* in (?P<seconds>[\d.]+) s")
TO_0003 = "Running upgrade 0002_snapshot_columns -> 0003_backfill_session_snapshots"
TO_0004 = "Running upgrade 0003_backfill_session_snapshots -> 0004_snapshot_indexes"


@dataclass
class Measured:
    """One child process: exit code, wall time, peak RSS, and its lines with arrival times."""

    returncode: int
    seconds: float
    max_rss_mb: float
    stdout: str
    lines: list[tuple[float, str]] = field(default_factory=list)

    @property
    def stderr(self) -> str:
        return "\n".join(line for _, line in self.lines)


def load_average() -> float:
    with open("/proc/loadavg") as handle:
        return float(handle.read().split()[0])


def run_measured(cmd: Sequence[str], *, timeout: float = 7200) -> Measured:
    """Run ``cmd``; its stderr lines are timestamped on arrival (seconds since start)."""
    started = time.monotonic()
    proc = subprocess.Popen(
        list(cmd),
        cwd=PROJECT_ROOT,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    lines: list[tuple[float, str]] = []
    out: list[str] = []

    def read_err() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append((time.monotonic() - started, line.rstrip("\n")))

    def read_out() -> None:
        assert proc.stdout is not None
        out.append(proc.stdout.read())

    readers = [threading.Thread(target=read_err), threading.Thread(target=read_out)]
    for reader in readers:
        reader.start()
    deadline = started + timeout
    while True:  # wait4 on this child only: its own peak RSS, not its siblings'
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
        time.sleep(0.005)
    seconds = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    for reader in readers:
        reader.join()
    return Measured(
        returncode=proc.returncode,
        seconds=seconds,
        max_rss_mb=usage.ru_maxrss / 1024,  # KiB on Linux
        stdout="".join(out),
        lines=lines,
    )


def _fail(what: str, m: Measured) -> RuntimeError:
    tail = "\n".join(line for _, line in m.lines[-30:])
    return RuntimeError(f"{what} failed with exit code {m.returncode}:\n{tail}\n{m.stdout}")


def product(
    url: str,
    sessions: int,
    join_back: str = "auto",
    workers: str = "1",
    writer: bool = False,
    defer_indexes: str = "off",
    walk_order: str = "auto",  # the product's default
) -> dict[str, Any]:
    """The real deploy step, ``alembic upgrade head`` from 0002, measured from outside;
    ``writer``: with :class:`WriterProbe` writing beside it (PostgreSQL)."""
    knobs = {
        "log_interval": "0",
        "join_back": join_back,
        "workers": workers,
        "defer_indexes": defer_indexes,
        "walk_order": walk_order,
    }
    probe = WriterProbe(url) if writer else None
    with WaitSampler(url) as waits:
        if probe is not None:
            probe.start()
        try:
            m = run_measured(alembic(url, "upgrade", "head", extra_x=knobs))
        finally:
            if probe is not None:
                probe.finish()
    if m.returncode != 0:
        raise _fail("alembic upgrade head", m)
    batches: list[dict[str, Any]] = []
    rebuilt = 0.0  # defer_indexes: seconds the deferred indexes took to build again
    t_0003 = t_0004 = None
    walk_end = catchup_end = None
    for arrived, line in m.lines:
        if TO_0003 in line:
            t_0003 = arrived
        elif TO_0004 in line:
            t_0004 = arrived
        built = REBUILT_LINE.search(line)
        if built:
            rebuilt += float(built["seconds"])
        match = BATCH_LINE.search(line)
        if match:
            rows = match["rows"]
            batches.append(
                {
                    "phase": match["phase"],
                    "batch": int(match["batch"]),
                    "rows": int(rows) if rows else None,
                    "seconds": float(match["seconds"]),
                    "at": round(arrived, 3),
                }
            )
            if match["phase"] == "walk":
                walk_end = arrived
            else:
                catchup_end = arrived
    if t_0003 is None or t_0004 is None or not batches:
        raise _fail("parsing the upgrade's log", m)
    durations = [b["seconds"] for b in batches]
    walk_rows = [b["rows"] for b in batches if b["phase"] == "walk" and b["rows"]]
    return {
        "seconds": round(m.seconds, 3),
        "sessions_per_second": round(sessions / m.seconds, 1),
        "max_rss_mb": round(m.max_rss_mb, 1),
        "first_commit_seconds": round(batches[0]["at"], 3),
        "phases": {
            "startup": round(t_0003, 3),
            "backfill": round(t_0004 - t_0003, 3),
            "walk": round((walk_end or t_0004) - t_0003, 3),
            "catchup": round((catchup_end or walk_end or t_0004) - (walk_end or t_0003), 3),
            "indexes_vacuum_validate": round(m.seconds - t_0004, 3),
            "deferred_indexes_rebuilt": round(rebuilt, 3),
        },
        "batches": len(batches),
        "wait_events": waits.shares(),
        "batch_seconds": {
            "p50": round(percentile(durations, 0.50), 4),
            "p95": round(percentile(durations, 0.95), 4),
            "max": round(max(durations), 4),
        },
        "walk_batch_rows": {
            "p50": int(percentile([float(r) for r in walk_rows], 0.5)) if walk_rows else 0,
            "max": max(walk_rows, default=0),
        },
        "batch_log": batches,
        **({"writer": probe.figures()} if probe is not None else {}),
    }


def product_key(url: str, sessions: int) -> dict[str, Any]:
    """:func:`product` with the join-back by key (``-x join_back=key``: Citus's path)."""
    return product(url, sessions, join_back="key")


class WaitSampler:
    """Where the batches' backends spend their time (PostgreSQL): every
    :data:`SAMPLE_S` seconds, what each backend of the backfill's connections is doing
    (``pg_stat_activity``: on CPU when active without a wait event, else the wait event,
    e.g. ``LWLock:WALWrite``, ``IO:WALSync``, ``IO:DataFileRead``). One sample costs
    about a millisecond of one backend's CPU."""

    SAMPLE_S = 0.1
    QUERY = sa.text(
        "SELECT CASE WHEN wait_event IS NULL THEN 'CPU' "
        "ELSE wait_event_type || ':' || wait_event END "
        "FROM pg_stat_activity WHERE application_name = :name AND state = 'active'"
    )

    def __init__(self, url: str, application_name: str = "cowrie-backfill") -> None:
        self.url = url
        self.application_name = application_name
        self.counts: dict[str, int] = {}
        self.samples = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> WaitSampler:
        self.cpu_before = _cpu_times()
        if self.url.startswith("postgresql"):
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()
        self.cpu_after = _cpu_times()

    def _run(self) -> None:
        engine = sa.create_engine(self.url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                while not self.stop.wait(self.SAMPLE_S):
                    self.samples += 1
                    for (what,) in conn.execute(self.QUERY, {"name": self.application_name}):
                        self.counts[what] = self.counts.get(what, 0) + 1
        finally:
            engine.dispose()

    def shares(self) -> dict[str, Any]:
        """Backends busy on average per sample, in all and per state (CPU, each wait)."""
        spent = [b - a for a, b in zip(self.cpu_before, self.cpu_after, strict=True)]
        # the machine's CPU over the run: /proc/stat's user+nice, system, iowait, idle
        machine = dict(zip(("user", "system", "iowait", "idle"), spent, strict=True))
        total = sum(spent) or 1
        cpu = {k: round(v / total, 3) for k, v in machine.items()}
        if not self.samples:
            return {"machine_cpu": cpu}
        busy = {k: round(v / self.samples, 3) for k, v in sorted(self.counts.items())}
        return {
            "machine_cpu": cpu,
            "samples": self.samples,
            "active_backends": round(sum(busy.values()), 3),
            **busy,
        }


def _cpu_times() -> list[int]:
    """The machine's CPU ticks since boot: user+nice, system (+irq, softirq), iowait, idle
    (zeros where there is no /proc/stat)."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            f = [int(x) for x in handle.readline().split()[1:8]]
    except OSError:
        return [0, 0, 0, 0]
    user, nice, system, idle, iowait, irq, softirq = f
    return [user + nice, system + irq + softirq, iowait, idle]


def product_2w(url: str, sessions: int) -> dict[str, Any]:
    """:func:`product` with two workers (``-x workers=2``; on partitions, ``auto:2``)."""
    return product(url, sessions, workers=_workers(url, 2))


def product_defer(url: str, sessions: int) -> dict[str, Any]:
    """:func:`product` with ``-x defer_indexes=on``: the indexes on the snapshot columns
    dropped for the walk and built again after it."""
    return product(url, sessions, defer_indexes="on")


def product_2w_defer(url: str, sessions: int) -> dict[str, Any]:
    """:func:`product_defer` with two workers."""
    return product(url, sessions, workers=_workers(url, 2), defer_indexes="on")


def product_blocks(url: str, sessions: int) -> dict[str, Any]:
    """:func:`product` with ``-x walk_order=blocks`` (:mod:`cowrieprocessor.backfill.blocks`)."""
    return product(url, sessions, walk_order="blocks")


def product_2w_blocks(url: str, sessions: int) -> dict[str, Any]:
    """:func:`product_blocks` with two workers."""
    return product(url, sessions, workers=_workers(url, 2), walk_order="blocks")


def product_2w_writer(url: str, sessions: int) -> dict[str, Any]:
    """:func:`product_2w` with an application's single-row writes beside it."""
    return product(url, sessions, workers=_workers(url, 2), writer=True)


class WriterProbe:
    """An application's writes beside the backfill: every :data:`INTERVAL_S` seconds one
    ``UPDATE`` of one session (drawn from a sample of 2,000), on its own connection in
    autocommit, timed. It sets ``event_count`` to itself: the row is locked and gets a
    new version as any write would, and no value changes (the result digest still
    compares with the limit's). A write that meets a batch's lock waits for that batch.
    """

    INTERVAL_S = 0.01
    SAMPLE = sa.text("SELECT session_id FROM session_summaries TABLESAMPLE SYSTEM (1) LIMIT 2000")
    WRITE = sa.text("UPDATE session_summaries SET event_count = event_count WHERE session_id = :id")

    def __init__(self, url: str) -> None:
        self.url = url
        self.waits: list[float] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def finish(self) -> None:
        self.stop.set()
        self.thread.join()

    def _run(self) -> None:
        engine = sa.create_engine(self.url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                ids = list(conn.execute(self.SAMPLE).scalars())
                turn = 0
                while ids and not self.stop.wait(self.INTERVAL_S):
                    began = time.perf_counter()
                    try:
                        conn.execute(self.WRITE, {"id": ids[turn % len(ids)]})
                    except sa.exc.DBAPIError as exc:
                        self.errors.append(str(exc.orig).splitlines()[0])
                        continue
                    self.waits.append(time.perf_counter() - began)
                    turn += 7919  # a prime: the writes wander over the sample
        finally:
            engine.dispose()

    def figures(self) -> dict[str, Any]:
        """The writes' latencies over the whole upgrade, in milliseconds."""
        ms = [w * 1000 for w in self.waits]
        if not ms:
            return {"writes": 0, "errors": self.errors[:5]}
        return {
            "writes": len(ms),
            "errors": self.errors[:5],
            **{f"p{q}": round(percentile(ms, q / 100), 1) for q in (50, 95, 99)},
            "max": round(max(ms), 1),
            "over_500ms": sum(1 for x in ms if x > 500),
        }


def product_4w(url: str, sessions: int) -> dict[str, Any]:
    """:func:`product` with four workers (``-x workers=4``; on partitions, ``auto:4``)."""
    return product(url, sessions, workers=_workers(url, 4))


def _workers(url: str, n: int) -> str:
    """``n`` stripes of the key on a plain table, ``n`` partitions at a time on a
    partitioned one (one per partition: ``auto:n``); both mean n connections."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            kind = conn.execute(
                sa.text("SELECT relkind FROM pg_class WHERE oid = to_regclass('session_summaries')")
            ).scalar()
    finally:
        engine.dispose()
    return f"auto:{n}" if kind == "p" else str(n)


def _python_module(what: str, module: str, url: str, *args: str) -> tuple[Measured, dict[str, Any]]:
    """Run ``python -m module url [args]``; its last stdout line is its JSON report."""
    m = run_measured([sys.executable, "-m", module, url, *args])
    if m.returncode != 0:
        raise _fail(what, m)
    data: dict[str, Any] = json.loads(m.stdout.strip().splitlines()[-1])
    return m, data


def limit(url: str, sessions: int) -> dict[str, Any]:
    """One unbatched UPDATE and the plain index builds (benchmarks/limit.py)."""
    with WaitSampler(url, "cowrie-bench-limit") as waits:
        m, data = _python_module("the limit", "benchmarks.limit", url)
    seconds = float(data["seconds"])
    return {
        "seconds": round(seconds, 3),  # in-process: no interpreter start-up counted
        "wall_seconds": round(m.seconds, 3),
        "sessions_per_second": round(sessions / seconds, 1),
        "max_rss_mb": round(m.max_rss_mb, 1),
        "first_commit_seconds": round(float(data["steps"]["update"]), 3),
        "steps": {k: round(float(v), 3) for k, v in data["steps"].items()},
        "rows_updated": data["rows_updated"],
        "wait_events": waits.shares(),
        "json_kinds": data.get("json_kinds", {}),
        "indexes_built": data.get("indexes_built"),
        "indexes_present": data.get("indexes_present"),
        "constraints_validated": data.get("constraints_validated"),
    }


def _walk(url: str, sessions: int, record: bool) -> dict[str, Any]:
    args = () if record else ("--no-record",)
    what = f"the backfill engine alone (record={record})"
    m, data = _python_module(what, "benchmarks.walk", url, *args)
    seconds = float(data["seconds"])
    return {
        "seconds": round(seconds, 3),  # in-process, as the limit's
        "wall_seconds": round(m.seconds, 3),
        "sessions_per_second": round(sessions / seconds, 1),
        "max_rss_mb": round(m.max_rss_mb, 1),
        "first_commit_seconds": None,
        "record": record,
        "walk_seconds": round(float(data["walk_seconds"]), 3),
        "walk_batch_seconds_sum": round(float(data["walk_batch_seconds_sum"]), 3),
        "walk_batches": data["walk_batches"],
        "batches": data["batches"],
        "rows_updated": data["rows_updated"],
        "retries": data["retries"],
    }


def walk(url: str, sessions: int) -> dict[str, Any]:
    """The backfill engine alone, with its rollback record (benchmarks/walk.py)."""
    return _walk(url, sessions, record=True)


def walk_norecord(url: str, sessions: int) -> dict[str, Any]:
    """The backfill engine alone, ``record=False``: the baseline of the record's cost."""
    return _walk(url, sessions, record=False)


def upstream(url: str, sessions: int) -> dict[str, Any]:
    """Upstream's method (benchmarks/upstream.py): LIMIT batches, one UPDATE per session."""
    m, data = _python_module("the upstream approach", "benchmarks.upstream", url)
    seconds = float(data["seconds"])
    durations = [float(x) for x in data["batch_seconds"]]
    return {
        "seconds": round(seconds, 3),
        "wall_seconds": round(m.seconds, 3),
        "sessions_per_second": round(sessions / seconds, 1),
        "max_rss_mb": round(m.max_rss_mb, 1),
        "first_commit_seconds": round(float(data["first_commit_seconds"] or 0.0), 3),
        "batches": data["batches"],
        "batch_seconds": {
            "p50": round(percentile(durations, 0.50), 4),
            "p95": round(percentile(durations, 0.95), 4),
            "max": round(max(durations, default=0.0), 4),
        },
        "rows_updated": data["updated"],
    }


def digest(url: str) -> dict[str, Any]:
    """A digest of every session's five snapshot columns, and how many have a source_ip."""
    engine = create_engine_from_url(url, application_name="cowrie-bench-digest")
    total = 0
    filled = 0
    accumulator = 0
    try:
        with engine.connect() as conn:
            rows = conn.execution_options(stream_results=True, yield_per=20_000).execute(
                sa.text(
                    "SELECT session_id, source_ip, snapshot_asn, snapshot_country, "
                    "snapshot_ip_type, enrichment_at FROM session_summaries"
                )
            )
            for row in rows:
                text = "|".join("" if v is None else str(v) for v in row)
                h = hashlib.blake2b(text.encode(), digest_size=8).digest()
                accumulator = (accumulator + int.from_bytes(h, "big")) % (1 << 64)
                total += 1
                filled += row[1] is not None
    finally:
        engine.dispose()
    return {"sessions": total, "with_source_ip": filled, "digest": f"{accumulator:016x}"}
