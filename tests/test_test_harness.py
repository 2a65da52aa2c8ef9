"""The suite's own promises: without PostgreSQL it skips loudly, and under CI it fails;
``cowrie-db`` run in the test's process says what the real command says."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cowrieprocessor.settings import PROJECT_ROOT
from cowrieprocessor.testing.runners import cowrie_db, cowrie_db_here

TARGET = (
    "tests/test_migrations_history.py::test_upgrade_head_then_downgrade_base_leaves_an_empty_schema"
)


def run_without_postgres(tmp_path: Path, ci: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TEST_POSTGRES_URL")}
    env["COWRIE_PG_BINDIR"] = str(tmp_path)  # a folder without initdb
    if ci:
        env["CI"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", f"{TARGET}[postgresql]"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize("ci", [False, True], ids=["local-skips", "ci-fails"])
def test_missing_postgres_skips_loudly_or_fails_under_ci(tmp_path: Path, ci: bool) -> None:
    out = run_without_postgres(tmp_path, ci)
    assert "PostgreSQL tests cannot run" in out.stdout
    if ci:
        assert out.returncode != 0
        assert "CI is set, so this is a failure" in out.stdout
    else:
        assert out.returncode == 0
        assert "1 skipped" in out.stdout


LOG_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", re.MULTILINE)


def process_state() -> tuple[object, ...]:
    """What ``cowrie-db``'s ``main`` could change in the process that calls it."""
    root = logging.getLogger()
    return (
        list(root.handlers),
        root.level,
        logging.getLogger("alembic").level,
        signal.getsignal(signal.SIGINT),
        signal.getsignal(signal.SIGTERM),
        dict(os.environ),
        os.getcwd(),
        (sys.stdin, sys.stdout, sys.stderr),
    )


def test_cowrie_db_here_says_what_the_real_command_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its output and exit status, log lines included (their time apart), and nothing
    left behind in this process (COWRIE_DB_URL is not read, as the child does not)."""
    text_file = tmp_path / "notes.sqlite"
    text_file.write_text("hostname,ip\n")
    monkeypatch.setenv("COWRIE_DB_URL", f"sqlite:///{tmp_path}/not-this.sqlite")
    monkeypatch.setenv("COWRIE_DATA_DIR", str(tmp_path / "data"))  # the default's folder
    monkeypatch.chdir(tmp_path)  # the command runs in the project folder, as the child does
    for argv in (
        ["nosuch"],  # argparse: usage, exit 2
        ["--version"],
        ["--db", "", "check"],
        ["--db", f"sqlite:///{text_file}", "upgrade"],
        ["control", "set", "batch_size=0"],
        ["status"],  # the embedded default (COWRIE_DATA_DIR), not COWRIE_DB_URL
        ["--db", f"sqlite:///{tmp_path}/new.sqlite", "-v", "upgrade", "--sql", "0001_baseline"],
    ):
        before = process_state()
        here = cowrie_db_here(*argv)
        assert process_state() == before, argv
        child = cowrie_db(*argv)
        assert (here.returncode, here.stdout) == (child.returncode, child.stdout), argv
        assert LOG_TIME.sub("", here.stderr) == LOG_TIME.sub("", child.stderr), argv
        assert child.stdout + child.stderr, argv
    assert "INFO" in here.stderr and "CREATE TABLE" in here.stdout  # the log, the SQL
    assert sorted(tmp_path.iterdir()) == [tmp_path / "data", text_file]
