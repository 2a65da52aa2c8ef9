"""SQLite faults: the write lock held by another process and a full disk (the run stops
with the range named, only whole ranges committed, and a rerun completes), a read-only
file or folder (a clear error, nothing written), a read-only URI (nothing created)."""

from __future__ import annotations

import ctypes
import hashlib
import os
import resource
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from cowrieprocessor.backfill import BACKFILL_JOB
from cowrieprocessor.db.engine import create_engine_from_url
from cowrieprocessor.testing.databases import sqlite_path
from cowrieprocessor.testing.reliability.datasets import Dataset
from cowrieprocessor.testing.reliability.figures import record
from cowrieprocessor.testing.reliability.outcomes import (
    BEFORE,
    NULLS,
    assert_only_whole_ranges_committed,
    differences,
)
from cowrieprocessor.testing.runners import Alembic, run_alembic
from cowrieprocessor.testing.seed import snapshots, version

HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
"""


class LockHolder:
    """Another process that holds SQLite's write lock until told to let go."""

    def __init__(self, url: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, sqlite_path(url)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "locked"
        self.since = time.monotonic()

    def release(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write("\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
            assert self.proc.stdout is not None
            self.proc.stdout.close()


def test_sqlite_locked_by_another_process_stops_with_the_range_named(sqlite_small: Dataset) -> None:
    url = sqlite_small.clone()
    engine = create_engine_from_url(url)
    knobs = {"batch_size": "200", "pause_ms": "30", "lock_timeout": "100ms", "max_retries": "2"}
    run = Alembic(url, "upgrade", "head", x=knobs)
    assert run.wait_for_batches(engine, BACKFILL_JOB, 3, timeout=60), run.output
    holder = LockHolder(url)
    try:
        rc = run.wait(60)
        held_for = time.monotonic() - holder.since
        assert rc != 0
        out = run.output
        assert "failed after 3 attempt(s): database is locked" in out
        assert f"{BACKFILL_JOB} walk batch" in out and "session_id range (" in out
        # 3 waits of 100 ms and 2 backoffs of at most 0.2 + 0.4 s, plus the batch in flight
        # and the process's exit: bounded, never a hang
        assert held_for < 3 * 0.1 + 0.6 + 2.0, f"gave up only after {held_for:.1f} s"
        assert version(engine) == BEFORE
        committed = assert_only_whole_ranges_committed(engine, sqlite_small.reference)
    finally:
        holder.release()
    again = run_alembic(url, "upgrade", "head")
    assert again.returncode == 0, again.stderr
    assert "resuming walk" in again.stderr
    assert not differences(snapshots(engine), sqlite_small.reference)
    engine.dispose()
    record(
        "sqlite locked by another process (gives up)",
        dialect="sqlite",
        gave_up_after_s=round(held_for, 2),
        rows_committed_before=committed,
        differences=0,
    )


def test_sqlite_disk_full_stops_cleanly_and_a_rerun_completes(sqlite_small: Dataset) -> None:
    url = sqlite_small.clone()
    engine = create_engine_from_url(url)
    engine.dispose()  # its last connection checkpoints and removes the WAL
    size = Path(sqlite_path(url)).stat().st_size

    def full_disk() -> None:  # no file may grow past the database's size plus 256 KiB
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 262144, size + 262144))

    run = Alembic(url, "upgrade", "head", x={"batch_size": "100"}, preexec_fn=full_disk)
    rc = run.wait()
    out = run.output
    assert rc != 0
    assert "disk I/O error" in out or "database or disk is full" in out, out
    assert "session_id range (" in out
    with sqlite3.connect(sqlite_path(url)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()
    assert version(engine) == BEFORE
    committed = assert_only_whole_ranges_committed(engine, sqlite_small.reference)
    assert 0 < committed < sqlite_small.sessions
    again = run_alembic(url, "upgrade", "head")
    assert again.returncode == 0, again.stderr
    assert not differences(snapshots(engine), sqlite_small.reference)
    engine.dispose()
    record("sqlite disk full", dialect="sqlite", rows_committed_before=committed, differences=0)


CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER = 1, 2, 3
PR_CAPBSET_DROP = 24


def _as_ordinary_user() -> None:
    """Root ignores file modes: drop the capabilities that let it (in the child only)."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.mark.parametrize("what", ["file", "folder"])
def test_sqlite_read_only_database_fails_clearly_and_writes_nothing(
    sqlite_small: Dataset, what: str
) -> None:
    url = sqlite_small.clone()
    path = Path(sqlite_path(url))
    folder = path.parent / f"ro-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    path = path.rename(folder / path.name)
    url = f"sqlite:///{path}"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    (path if what == "file" else folder).chmod(0o444 if what == "file" else 0o555)
    try:
        run = Alembic(url, "upgrade", "head", preexec_fn=_as_ordinary_user)
    except subprocess.SubprocessError as exc:
        pytest.skip(f"cannot drop root's file-permission override here: {exc}")
    try:
        rc = run.wait()
    finally:
        folder.chmod(0o755)
        path.chmod(0o644)
    assert rc != 0
    assert "attempt to write a readonly database" in run.output
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    engine = create_engine_from_url(url)
    assert version(engine) == BEFORE
    assert all(snap == NULLS for snap in snapshots(engine).values())
    engine.dispose()


def test_a_read_only_uri_opens_without_creating_folders(
    sqlite_small: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///file:{sqlite_path(sqlite_small.template)}?mode=ro&uri=true"
    engine = create_engine_from_url(url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM session_summaries")).scalar()
    engine.dispose()
    assert list(tmp_path.iterdir()) == []
