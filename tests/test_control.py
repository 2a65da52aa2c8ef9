"""Steering a running job from another terminal (``cowrie-db control``), on both dialects,
whether the job was started by ``alembic upgrade head`` or by ``cowrie-db backfill``;
and the command line as operators type it (options after the command, the seed
runbook's invocations)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from cowrieprocessor.backfill import BACKFILL_JOB
from cowrieprocessor.backfill.progress import LATER_COLUMNS, PROGRESS_TABLE, progress_table
from cowrieprocessor.db.engine import create_engine_from_url
from cowrieprocessor.testing.oracle import current_snapshots, expected_snapshots
from cowrieprocessor.testing.runners import (
    Alembic,
    CowrieDb,
    batches_committed,
    cowrie_db,
    cowrie_db_here,
    wait_for_heartbeats,
)
from cowrieprocessor.testing.seed import at_0002, read, seed_random, version

SESSIONS, IPS = 4_000, 400
# 40 batches of 100 sessions, 150 ms apart: 6 s, time enough for a `cowrie-db control`
# process to start and reach the job even on a loaded machine
SLOW = {"batch_size": "100", "pause_ms": "150"}
SLOW_FLAGS = ["--batch-size", "100", "--pause-ms", "150", "--log-interval", "0"]
HEAD = "0004_snapshot_indexes"


@pytest.fixture
def seeded(db_url: str) -> tuple[str, dict[str, Any]]:
    """A database at 0002 with sessions to backfill, and what the backfill must write."""
    engine = at_0002(db_url)
    with engine.begin() as conn:
        seed_random(conn, SESSIONS, IPS, seed=5)
    with engine.connect() as conn:
        want = expected_snapshots(conn)
    engine.dispose()
    return db_url, want


@contextmanager
def slow_backfill(url: str, batches: int = 3) -> Iterator[tuple[CowrieDb, sa.Engine]]:
    """``cowrie-db backfill`` with slow batches, ``batches`` batches in; killed at the
    end if it still runs."""
    engine = create_engine_from_url(url)
    run = CowrieDb("backfill", "--db", url, *SLOW_FLAGS)
    try:
        assert run.wait_for_batches(engine, BACKFILL_JOB, batches), run.output
        yield run, engine
    finally:
        if run.running():
            run.kill()
        engine.dispose()


def control(url: str, *args: str) -> Any:
    """``cowrie-db control ARGS --db URL`` (the options after the command, as typed)."""
    return cowrie_db("control", *args, "--db", url, timeout=60)


def control_here(url: str, *args: str) -> Any:
    """:func:`control`, its ``main`` in this process (a refusal: no second process needed)."""
    return cowrie_db_here("control", *args, "--db", url)


def test_pause_holds_alembic_upgrade_head_unstamped_until_resume(
    seeded: tuple[str, dict[str, Any]],
) -> None:
    url, want = seeded
    engine = create_engine_from_url(url)
    run = Alembic(url, "upgrade", "head", x=SLOW)
    try:
        assert run.wait_for_batches(engine, BACKFILL_JOB, 3), run.output
        paused = control(url, "pause")
        assert paused.returncode == 0, paused.stdout + paused.stderr
        assert "paused: no batch starts" in paused.stdout
        held = batches_committed(engine, BACKFILL_JOB)
        # the run looks at its commands twice more and starts no batch
        wait_for_heartbeats(engine, BACKFILL_JOB, 2)
        assert batches_committed(engine, BACKFILL_JOB) == held, "a batch committed while paused"
        assert run.running() and version(engine) == "0002_snapshot_columns"
        status = cowrie_db("status", "--db", url)
        assert "state: paused (paused by operator since" in status.stdout, status.stdout
        # the rest of the walk without the 150 ms between batches
        assert control(url, "set", "pause_ms=0").returncode == 0
        resumed = control(url, "resume")
        # what the run says next is the proof (below); a small walk without a pause may
        # end before this command looks again
        assert resumed.returncode == 0, resumed.stdout
        assert re.search(r"resumed: |ended after the resume was sent", resumed.stdout), resumed
        assert run.wait() == 0, run.output
    finally:
        if run.running():
            run.kill()
    assert version(engine) == HEAD
    engine.dispose()
    assert "paused by operator since" in run.output
    assert re.search(r"resumed by operator after \d+\.\d s paused", run.output)
    assert re.search(r"Held back: paused 1 time\(s\), [1-9]\d*\.\d s", run.output), run.output
    assert read(url, current_snapshots) == want


def test_set_changes_the_batch_size_from_the_next_batch(
    seeded: tuple[str, dict[str, Any]],
) -> None:
    url, want = seeded
    with slow_backfill(url) as (run, _engine):
        changed = control(url, "set", "batch_size=40", "pause_ms=10")
        assert changed.returncode == 0, changed.stdout + changed.stderr
        assert "knobs in force: " in changed.stdout and "batch_size=40" in changed.stdout
        assert run.wait() == 0, run.output
    lines = run.output.splitlines()
    at = next(i for i, line in enumerate(lines) if "knobs changed by operator" in line)
    assert "batch_size 100 -> 40; pause_ms 150 ms -> 10 ms" in lines[at]
    sizes = [re.findall(r"batch \d+: (\d+) rows", line) for line in lines]
    before = {int(s[0]) for s in sizes[:at] if s}
    after = {int(s[0]) for s in sizes[at:] if s}
    # at most: a range of blocks ends with its round (the default order here)
    assert max(before) == 100 and max(after) == 40, (before, after)
    assert read(url, current_snapshots) == want


def test_stop_ends_after_the_batch_and_a_rerun_resumes(
    seeded: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    url, want = seeded
    with slow_backfill(url) as (run, engine):
        stopped = control(url, "stop")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert run.wait() == 130, run.output
        committed = batches_committed(engine, BACKFILL_JOB)
    assert "stopped by operator (cowrie-db control stop at" in run.output
    assert "Resume with the same command" in run.output
    assert committed >= 3
    status = cowrie_db("status", "--db", url)
    assert "state: not running (stopped" in status.stdout, status.stdout
    # the seed runbook's resume command, as written (apart from the script's name)
    rerun = cowrie_db(
        "backfill",
        "--db",
        url,
        "--batch-size",
        "1000",
        "--resume",
        "--checkpoint-file",
        str(tmp_path / "snapshot_backfill.json"),
        "--status-dir",
        str(tmp_path),
        "--progress",
    )
    assert rerun.returncode == 0, rerun.stderr
    assert f"--resume: continuing the walk phase after batch {committed}" in rerun.stderr
    status_file = json.loads((tmp_path / "snapshot_backfill.json").read_text())
    assert status_file["phase"] == "done" and status_file["run_state"] == "finished"
    assert status_file["knobs"]["batch_size"] == "1000" and status_file["waits"] == {}
    assert read(url, current_snapshots) == want


def test_a_pause_left_by_a_killed_run_waits_for_nobody(
    seeded: tuple[str, dict[str, Any]],
) -> None:
    url, want = seeded
    with slow_backfill(url):
        assert control(url, "pause").returncode == 0
    # nothing runs: a command is refused (exit 1), the row's pause is not "running"
    deadline = time.monotonic() + 30
    while (refused := control(url, "resume")).returncode != 1:
        assert time.monotonic() < deadline, refused.stdout + refused.stderr
        time.sleep(0.2)
    assert "no backfill or clear is running" in refused.stdout
    assert "state: not running" in cowrie_db("status", "--db", url).stdout
    rerun = cowrie_db("backfill", "--db", url, "--batch-size", "1000")
    assert rerun.returncode == 0, rerun.stderr
    assert "discarding control commands left by an earlier run of snapshot_backfill: pause" in (
        rerun.stderr
    )
    assert read(url, current_snapshots) == want


def test_control_refuses_bad_input_and_changes_nothing(
    seeded: tuple[str, dict[str, Any]],
) -> None:
    url, _want = seeded
    with slow_backfill(url, batches=2) as (run, engine):
        assert control(url, "pause").returncode == 0  # it keeps running, without batches
        before = control_columns(engine)
        for args, message in (
            (("set", "batch_sze=10"), "unknown backfill knob(s) batch_sze"),
            (("set", "batch_size=0"), "batch_size='0' (from cowrie-db control set) is out of"),
            (("set", "max_replica_lag=12XB"), "max_replica_lag='12XB'"),
            (("set", "status_file=/tmp/x"), "status_file cannot change while a job runs"),
            (("set", "batch_size"), "'batch_size' is not name=value"),
            (("set",), "set what?"),
            (("pause", "now"), "`control pause` takes no arguments"),
        ):
            out = control_here(url, *args)
            assert out.returncode == 2, (args, out.stdout, out.stderr)
            assert message in out.stderr, (args, out.stderr)
        assert control_columns(engine) == before
        assert run.running()
        assert control(url, "stop").returncode == 0
        assert run.wait() == 130
    # nothing running: exit 1, and it says so
    idle = control_here(url, "pause")
    assert idle.returncode == 1 and "no backfill or clear is running" in idle.stdout


def control_columns(engine: sa.Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.text(
                    f"SELECT control, control_knobs, control_seq, control_at FROM {PROGRESS_TABLE}"
                )
            ).all()
        )


def test_control_on_an_unreachable_database_fails_like_check() -> None:
    url = "postgresql://cowrie:secret@127.0.0.1:1/nowhere"
    out = cowrie_db_here("control", "pause", "--db", url)
    check = cowrie_db_here("check", "--db", url)
    assert out.returncode == check.returncode == 2
    assert "cannot connect to postgresql://cowrie:***@127.0.0.1:1/nowhere" in out.stderr
    assert "secret" not in out.stdout + out.stderr
    missing = cowrie_db_here("control", "pause", "--db", "sqlite:////nonexistent/folder/x.db")
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert not Path("/nonexistent/folder").exists()


def test_global_options_are_taken_before_and_after_the_command(
    seeded: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    url, want = seeded
    # the seed runbook: `cowrie-db check --verbose` (the database from the environment)
    assert "Progress:" not in cowrie_db("check", "--db", url).stdout
    check = cowrie_db("check", "--db", url, "--verbose")
    assert check.returncode == 0, check.stderr
    assert "Sessions:" in check.stdout
    # the seed runbook's dry run, as written (apart from the script's name)
    dry = cowrie_db("backfill", "--db", url, "--batch-size", "1000", "--dry-run", "--progress")
    assert dry.returncode == 0, dry.stderr
    assert "DRY RUN - Batch 1: would update" in dry.stderr
    assert read(url, current_snapshots) != want  # wrote nothing
    # the seed runbook's production run, as written
    status_dir = tmp_path / "status"
    status_dir.mkdir()
    full = cowrie_db(
        "backfill",
        "--db",
        url,
        "--batch-size",
        "1000",
        "--status-dir",
        str(status_dir),
        "--progress",
        "--checkpoint-file",
        str(status_dir / "snapshot_backfill.json"),
    )
    assert full.returncode == 0, full.stderr
    assert read(url, current_snapshots) == want
    for argv in (("--db", url, "status"), ("status", "--db", url), ("-v", "status", "--db", url)):
        out = cowrie_db(*argv)
        assert out.returncode == 0 and "snapshot_backfill: phase done" in out.stdout, argv
    # two different status files are refused by name, before anything runs
    clash = cowrie_db(
        "backfill", "--db", url, "--status-dir", str(status_dir), "--checkpoint-file", "/tmp/x"
    )
    assert clash.returncode == 2 and "name two status files" in clash.stderr


def test_a_progress_table_of_the_first_release_gets_the_new_columns(
    seeded: tuple[str, dict[str, Any]],
) -> None:
    """A database backfilled by the first release has a progress table without the
    control columns: the next run adds them, and status/control read both shapes."""
    url, want = seeded
    engine = create_engine_from_url(url)
    first_release = sa.Table(
        PROGRESS_TABLE,
        sa.MetaData(),
        *(
            sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
            for c in progress_table.columns
            if c.name not in LATER_COLUMNS
        ),
    )
    with engine.begin() as conn:
        first_release.create(conn)
    status = cowrie_db("status", "--db", url)
    assert status.returncode == 0, status.stderr
    assert control(url, "pause").returncode == 1  # nothing runs, and it can tell
    out = cowrie_db("backfill", "--db", url, "--batch-size", "1000")
    assert out.returncode == 0, out.stderr
    with engine.connect() as conn:
        have = {c["name"] for c in sa.inspect(conn).get_columns(PROGRESS_TABLE)}
    engine.dispose()
    assert set(LATER_COLUMNS) <= have
    assert "state: finished" in cowrie_db("status", "--db", url).stdout
    assert read(url, current_snapshots) == want
