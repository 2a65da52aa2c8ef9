"""One job at a time, on SQLite as on PostgreSQL: while a backfill runs, a second
``cowrie-db backfill``, ``alembic upgrade head`` and ``cowrie-db clear --all --yes`` are
each refused in one line naming the first one's pid, and change nothing; a holder killed
with ``kill -9`` leaves a claim that the next run takes over; two starters racing, one
wins. And the status file says how a run ended: finished, stopped or failed."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from cowrieprocessor.backfill import BACKFILL_JOB, control, progress, run_backfill
from cowrieprocessor.backfill.control import HEARTBEAT_FRESH_S, JobRunning
from cowrieprocessor.backfill.errors import BackfillInterrupted
from cowrieprocessor.backfill.knobs import BackfillKnobs
from cowrieprocessor.backfill.lock import ADVISORY_LOCK_KEY
from cowrieprocessor.backfill.progress import JobState, progress_table, utcnow
from cowrieprocessor.backfill.rollback_record import RECORD_TABLE
from cowrieprocessor.backfill.walker import BatchReport
from cowrieprocessor.db.engine import create_engine_from_url
from cowrieprocessor.testing.oracle import current_snapshots, expected_snapshots
from cowrieprocessor.testing.runners import CowrieDb, cowrie_db, run_alembic
from cowrieprocessor.testing.seed import at_0002, migrate, read, seed_random

SESSIONS, IPS = 4_000, 400
# 40 batches of 100 sessions, 150 ms apart: the holder is paused by `cowrie-db control`
# while the other commands run, so nothing here depends on how long they take
SLOW_FLAGS = ["--batch-size", "100", "--pause-ms", "150", "--log-interval", "0"]
REFUSED = "another backfill or clear is running on this database"
HEAD = "0004_snapshot_indexes"


@pytest.fixture
def seeded(db_url: str) -> tuple[str, dict[str, Any]]:
    """A database at 0002 with sessions to backfill, and what the backfill must write."""
    engine = at_0002(db_url)
    with engine.begin() as conn:
        seed_random(conn, SESSIONS, IPS, seed=11)
    with engine.connect() as conn:
        want = expected_snapshots(conn)
    engine.dispose()
    return db_url, want


def everything(conn: sa.Connection) -> dict[str, Any]:
    """What a refused command must leave as it was: the revision, the tables and the
    indexes, every snapshot value, the rollback record, the jobs' positions."""
    inspector = sa.inspect(conn)
    tables = sorted(inspector.get_table_names())
    found: dict[str, Any] = {
        "tables": tables,
        "indexes": sorted(ix["name"] or "" for ix in inspector.get_indexes("session_summaries")),
        "version": conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all(),
        "snapshots": current_snapshots(conn),
    }
    if RECORD_TABLE in tables:
        found["record"] = conn.execute(
            sa.select(sa.func.count()).select_from(sa.table(RECORD_TABLE))
        ).scalar_one()
    if progress.PROGRESS_TABLE in tables:
        t = progress_table
        found["positions"] = conn.execute(
            sa.select(t.c.job, t.c.phase, t.c.last_key, t.c.batches, t.c.rows_updated).order_by(
                t.c.job
            )
        ).all()
    conn.rollback()
    return found


def control_cmd(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return cowrie_db("control", *args, "--db", url, timeout=60)


def refusal_line(done: subprocess.CompletedProcess[str]) -> str:
    """The one line of a refused command that says why (it must be exactly one)."""
    output = done.stdout + done.stderr
    lines = [line for line in output.splitlines() if REFUSED in line]
    assert len(lines) == 1, output
    assert "Traceback" not in output, output
    return lines[0]


@pytest.fixture
def paused_holder(
    seeded: tuple[str, dict[str, Any]], tmp_path: Path
) -> Iterator[tuple[str, dict[str, Any], CowrieDb]]:
    """A `cowrie-db backfill` (status file in tmp_path) that has committed a batch and
    is paused by the operator: it holds the database and writes no batch meanwhile."""
    url, want = seeded
    engine = create_engine_from_url(url)
    holder = CowrieDb("backfill", "--db", url, *SLOW_FLAGS, "--status-dir", str(tmp_path))
    try:
        assert holder.wait_for_batches(engine, BACKFILL_JOB, 1), holder.output
        paused = control_cmd(url, "pause")  # returns once the job has acknowledged
        assert paused.returncode == 0, paused.stdout + paused.stderr
        yield url, want, holder
    finally:
        if holder.running():
            holder.kill()
        engine.dispose()


def test_a_second_backfill_alembic_upgrade_and_clear_are_refused_and_change_nothing(
    paused_holder: tuple[str, dict[str, Any], CowrieDb], tmp_path: Path
) -> None:
    url, want, holder = paused_holder
    before = read(url, everything)
    assert before["version"] == ["0002_snapshot_columns"]
    commands: list[Callable[[], subprocess.CompletedProcess[str]]] = [
        lambda: cowrie_db("backfill", "--db", url, "--status-dir", str(tmp_path)),
        lambda: run_alembic(url, "upgrade", "head"),
        lambda: cowrie_db("clear", "--all", "--yes", "--db", url),
    ]
    for command in commands:
        done = command()
        assert done.returncode == 1, done.stdout + done.stderr
        line = refusal_line(done)
        assert f"snapshot_backfill (pid {holder.proc.pid} on {socket.gethostname()}" in line
        assert "nothing was changed" in line
        assert read(url, everything) == before, done.args
    # the refused backfill wrote nothing into the holder's status file either
    status = json.loads((tmp_path / "snapshot_backfill.json").read_text())
    assert status["run_state"] == control.PAUSED
    # the holder was not disturbed: it finishes, and the deploy after it verifies
    assert control_cmd(url, "set", "pause_ms=0").returncode == 0  # the rest without pacing
    assert control_cmd(url, "resume").returncode == 0
    assert holder.wait() == 0, holder.output
    assert run_alembic(url, "upgrade", "head").returncode == 0
    assert read(url, current_snapshots) == want
    verified = cowrie_db("verify", "--db", url)
    assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.mark.parametrize(
    ("start", "command"),
    [
        # 0004 must not index and stamp head beside a job started by hand that still writes
        ("0003_backfill_session_snapshots", ("upgrade", "head")),
        # 0004's downgrade must not drop the indexes and stamp 0003 beside one
        ("0004_snapshot_indexes", ("downgrade", "0003_backfill_session_snapshots")),
    ],
    ids=["upgrade-at-0003", "downgrade-from-head"],
)
def test_alembic_beside_a_running_clear_is_refused_and_changes_nothing(
    seeded: tuple[str, dict[str, Any]], start: str, command: tuple[str, str]
) -> None:
    url, _want = seeded
    migrate(url, start)
    engine = create_engine_from_url(url)
    holder = CowrieDb("clear", "--all", "--yes", "--db", url, *SLOW_FLAGS)
    try:
        assert holder.wait_for_batches(engine, "snapshot_clear_all", 1), holder.output
        assert control_cmd(url, "pause").returncode == 0
        before = read(url, everything)
        done = run_alembic(url, *command)
        assert done.returncode == 1, done.stdout + done.stderr
        assert f"snapshot_clear_all (pid {holder.proc.pid} on" in refusal_line(done)
        assert read(url, everything) == before
        assert before["version"] == [start]
        assert control_cmd(url, "stop").returncode == 0
        assert holder.wait() == 130, holder.output
    finally:
        if holder.running():
            holder.kill()
        engine.dispose()


def test_a_holder_killed_with_kill_9_is_taken_over_and_the_rerun_finishes(
    seeded: tuple[str, dict[str, Any]],
) -> None:
    url, want = seeded
    engine = create_engine_from_url(url)
    holder = CowrieDb("backfill", "--db", url, *SLOW_FLAGS)
    try:
        assert holder.kill_after(engine, BACKFILL_JOB, 2), holder.output
    finally:
        engine.dispose()
    # its row still says it runs: the row is the claim a dead process left behind
    assert read(url, run_state_of_backfill) == control.RUNNING
    rerun = cowrie_db("backfill", "--db", url)
    assert rerun.returncode == 0, rerun.stderr
    if url.startswith("sqlite"):  # PostgreSQL's lock died with the session: nothing to take
        assert f"taking over from snapshot_backfill (pid {holder.proc.pid} on" in rerun.stderr
        assert f"process {holder.proc.pid} is gone" in rerun.stderr
    assert read(url, run_state_of_backfill) == control.FINISHED
    assert read(url, current_snapshots) == want
    assert run_alembic(url, "upgrade", "head").returncode == 0
    verified = cowrie_db("verify", "--db", url)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def run_state_of_backfill(conn: sa.Connection) -> str:
    t = progress_table
    return str(conn.execute(sa.select(t.c.run_state).where(t.c.job == BACKFILL_JOB)).scalar_one())


def slow_knobs(**more: str) -> BackfillKnobs:
    return BackfillKnobs.from_sources({"batch_size": "100", "pause_ms": "200", **more}, {})


def test_two_starters_racing_one_wins(seeded: tuple[str, dict[str, Any]]) -> None:
    """Both start at once; the claim is read and written in one transaction (SQLite:
    BEGIN IMMEDIATE), so exactly one of them runs, and the other writes nothing."""
    url, want = seeded
    engine = create_engine_from_url(url)
    start = threading.Barrier(2)
    ended = threading.Event()
    stops = [threading.Event(), threading.Event()]
    outcomes: list[BaseException | None] = [None, None]

    def starter(n: int) -> None:
        start.wait()
        try:
            run_backfill(engine, slow_knobs(), stop=stops[n])
        except BaseException as exc:  # the outcome is what the test reads
            outcomes[n] = exc
        finally:
            ended.set()

    threads = [threading.Thread(target=starter, args=(n,)) for n in (0, 1)]
    for thread in threads:
        thread.start()
    assert ended.wait(120), "neither starter ended"
    for stop in stops:  # the winner stops after its batch: the refusal came first
        stop.set()
    for thread in threads:
        thread.join(120)
    refused = [o for o in outcomes if isinstance(o, JobRunning)]
    assert len(refused) == 1, outcomes
    assert f"snapshot_backfill (pid {os.getpid()} on" in str(refused[0])
    winner = next(o for o in outcomes if not isinstance(o, JobRunning))
    assert winner is None or isinstance(winner, BackfillInterrupted), outcomes
    # the winner's claim ended with it: a rerun is not refused, and finishes the job
    run_backfill(engine, BackfillKnobs())
    assert read(url, current_snapshots) == want
    engine.dispose()


# --- SQLite: whose row is a live claim ---------------------------------------------------


@pytest.fixture
def live_process() -> Iterator[subprocess.Popen[str]]:
    """A process that lives until the test ends (it waits for its stdin to close)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE, text=True
    )
    try:
        yield proc
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(30)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(30)
    return proc.pid


def leave_claim(url: str, info: dict[str, Any], beat_ago_s: float = 1.0) -> None:
    """A backfill row saying its job runs, as ``info`` (pid, host, started) left it."""
    engine = create_engine_from_url(url)
    with engine.begin() as conn:
        progress.ensure_table(conn)
        progress.save(
            conn,
            JobState(job=BACKFILL_JOB, batches=3, last_key="000000000fff"),
            {
                "run_state": control.RUNNING,
                "run_info": json.dumps(info),
                "heartbeat_at": utcnow() - timedelta(seconds=beat_ago_s),
            },
        )
    engine.dispose()


HERE = socket.gethostname()


@pytest.mark.parametrize(
    ("case", "taken_over_because"),
    [
        ("a live process, the one that wrote it", None),
        ("a live process given a pid that was reused", "is another program now"),
        ("a process that is gone", "is gone"),
        ("another host, heartbeating", None),
        ("another host, silent for longer than HEARTBEAT_FRESH_S", "no heartbeat from"),
    ],
)
def test_a_claim_holds_while_its_job_lives_and_is_taken_over_when_gone(
    sqlite_url: str,
    live_process: subprocess.Popen[str],
    caplog: pytest.LogCaptureFixture,
    case: str,
    taken_over_because: str | None,
) -> None:
    engine = at_0002(sqlite_url)
    with engine.begin() as conn:
        seed_random(conn, 300, 50, seed=3)
    live = live_process.pid
    info, beat_ago = {
        "a live process, the one that wrote it": (
            {"pid": live, "host": HERE, "started": control.process_started(live)},
            1.0,
        ),
        "a live process given a pid that was reused": (
            {"pid": live, "host": HERE, "started": "another boot:1"},
            1.0,
        ),
        "a process that is gone": ({"pid": dead_pid(), "host": HERE, "started": None}, 1.0),
        "another host, heartbeating": (
            {"pid": live, "host": "elsewhere.invalid", "started": None},
            HEARTBEAT_FRESH_S / 4,
        ),
        "another host, silent for longer than HEARTBEAT_FRESH_S": (
            {"pid": live, "host": "elsewhere.invalid", "started": None},
            HEARTBEAT_FRESH_S * 2,
        ),
    }[case]
    leave_claim(sqlite_url, info, beat_ago)
    before = read(sqlite_url, everything)
    if taken_over_because is None:
        with pytest.raises(JobRunning, match=f"snapshot_backfill \\(pid {info['pid']} on "):
            run_backfill(engine, BackfillKnobs())
        assert read(sqlite_url, everything) == before
    else:
        with caplog.at_level(logging.WARNING, logger="cowrieprocessor.backfill"):
            run_backfill(engine, BackfillKnobs())
        taken = [r.getMessage() for r in caplog.records if "taking over from" in r.getMessage()]
        assert len(taken) == 1 and taken_over_because in taken[0], taken
        with engine.connect() as conn:
            assert run_state_of_backfill(conn) == control.FINISHED
    engine.dispose()


def test_a_dry_run_is_refused_too_and_writes_nothing(
    sqlite_url: str, live_process: subprocess.Popen[str]
) -> None:
    engine = at_0002(sqlite_url)
    with engine.begin() as conn:
        seed_random(conn, 300, 50, seed=3)
    started = control.process_started(live_process.pid)
    leave_claim(sqlite_url, {"pid": live_process.pid, "host": HERE, "started": started})
    before = read(sqlite_url, everything)
    with pytest.raises(JobRunning):
        run_backfill(engine, BackfillKnobs(), dry_run=True)
    assert read(sqlite_url, everything) == before
    engine.dispose()


# --- the status file says how the run ended ----------------------------------------------


@pytest.mark.parametrize("end", ["finished", "stopped", "failed"])
def test_the_status_file_and_the_row_say_how_the_run_ended(
    seeded: tuple[str, dict[str, Any]], tmp_path: Path, end: str
) -> None:
    url, _want = seeded
    engine = create_engine_from_url(url)
    status_file = tmp_path / "status.json"
    stop = threading.Event()

    def after_batch(report: BatchReport) -> None:
        if end == "stopped" and report.batch == 2:
            stop.set()  # as Ctrl-C and `cowrie-db control stop` do
        if end == "failed" and report.batch == 2:
            raise RuntimeError("the operator's callback broke")

    knobs = BackfillKnobs.from_sources({"batch_size": "500", "status_file": str(status_file)}, {})
    if end == "finished":
        run_backfill(engine, knobs, stop=stop, on_batch=after_batch)
    else:
        with pytest.raises(BackfillInterrupted if end == "stopped" else RuntimeError):
            run_backfill(engine, knobs, stop=stop, on_batch=after_batch)
    status = json.loads(status_file.read_text())
    assert status["run_state"] == end
    assert status["run_detail"] == ("the operator's callback broke" if end == "failed" else "")
    assert (status["phase"] == "done") == (end == "finished")
    with engine.connect() as conn:
        assert run_state_of_backfill(conn) == end
    # an ended run holds nothing: the next one runs (and finishes what was left)
    run_backfill(engine, BackfillKnobs())
    engine.dispose()


@pytest.mark.parametrize("holder_runs_here", [True, False], ids=["job-of-this-host", "bare-lock"])
def test_a_job_of_this_host_is_refused_at_once_other_holders_get_the_grace(
    pg_url: str, holder_runs_here: bool
) -> None:
    """PostgreSQL: the lock's grace (a holder whose client was just killed needs a
    moment to let go) is not waited out when the job's row names a process of this host
    that runs now; a holder the rows do not account for still gets it."""
    engine = at_0002(pg_url)
    with engine.begin() as conn:
        seed_random(conn, SESSIONS, IPS, seed=11)
    holder: CowrieDb | None = None
    bare = engine.connect()
    try:
        if holder_runs_here:
            holder = CowrieDb("backfill", "--db", pg_url, *SLOW_FLAGS)
            assert holder.wait_for_batches(engine, BACKFILL_JOB, 1), holder.output
            assert control_cmd(pg_url, "pause").returncode == 0
        else:
            bare.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
            bare.commit()
        slept: list[float] = []
        claim = control.AdvisoryClaim(sleep=slept.append)
        with engine.connect() as conn, pytest.raises(JobRunning) as refused:
            claim.attach(conn)
        if holder_runs_here:
            assert slept == [], "waited out the grace for a job that runs on this host"
            assert f"snapshot_backfill (pid {holder.proc.pid} on" in str(refused.value)  # type: ignore[union-attr]
        else:
            assert slept, "refused a bare lock's holder without the grace"
            assert "backend pid" in str(refused.value)
    finally:
        if holder is not None and holder.running():
            holder.kill()
        bare.close()
        engine.dispose()
