"""The suite's own promises: without PostgreSQL it skips loudly, and under CI it fails;
``cowrie-db`` run in the test's process, and our commands forked from the fork server,
say what the real command says."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from cowrieprocessor.backfill import BACKFILL_JOB
from cowrieprocessor.db.engine import create_engine_from_url
from cowrieprocessor.settings import PROJECT_ROOT
from cowrieprocessor.testing import forkserver
from cowrieprocessor.testing.runners import (
    COWRIE_DB,
    Alembic,
    alembic_argv,
    cowrie_db,
    cowrie_db_here,
    run_to_end,
)
from cowrieprocessor.testing.seed import at_0002, seed_random

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


def _both_ways(
    monkeypatch: pytest.MonkeyPatch, run: Callable[[str], tuple[int, str]], names: list[str]
) -> None:
    """``run(name)`` forked from the fork server on ``names[0]``'s files, then as a new
    interpreter on ``names[1]``'s: the same status and output (log times and the name
    apart)."""
    forked = run(names[0])
    with monkeypatch.context() as exec_only:
        exec_only.setenv(forkserver.NO_FORKSERVER, "1")
        new = run(names[1])
    assert forked[0] == new[0], (forked, new)
    assert LOG_TIME.sub("", forked[1]) == LOG_TIME.sub("", new[1]).replace(names[1], names[0])


def test_a_forked_command_says_and_exits_as_a_new_interpreter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``alembic`` and ``cowrie-db`` forked by :mod:`cowrieprocessor.testing.forkserver`
    print what a new interpreter prints and exit with its status: argparse's usage, a
    refusal, a deploy, offline SQL, a log at INFO, and Ctrl-C in the middle of a walk."""
    text_file = tmp_path / "notes.sqlite"
    text_file.write_text("hostname,ip\n")

    def db(name: str) -> str:
        return f"sqlite:///{tmp_path / name}.sqlite"

    commands: list[Callable[[str], list[str]]] = [
        lambda _n: [str(COWRIE_DB), "nosuch"],
        lambda _n: [str(COWRIE_DB), "--version"],
        lambda _n: [str(COWRIE_DB), "--db", f"sqlite:///{text_file}", "upgrade"],
        lambda n: [str(COWRIE_DB), "--db", db(n), "-v", "upgrade", "--sql", "0001_baseline"],
        lambda n: alembic_argv(db(n), "upgrade", "no_such_revision"),
        lambda n: alembic_argv(db(n), "upgrade", "0002_snapshot_columns"),
        lambda n: [str(COWRIE_DB), "--db", db(n), "status"],
    ]
    for argv in commands:
        assert forkserver.serves(argv("a"))

        def run(name: str, argv: Callable[[str], list[str]] = argv) -> tuple[int, str]:
            done = run_to_end(argv(name))
            return done.returncode, f"{done.stdout}\n--\n{done.stderr}"

        _both_ways(monkeypatch, run, ["fork", "exec"])

    # Ctrl-C after the second batch: our handler's exit status and last line
    for name in ("seeded-fork", "seeded-exec"):
        engine = at_0002(db(name))
        with engine.begin() as conn:
            seed_random(conn, 600, 60)
        engine.dispose()

    def interrupted(name: str) -> tuple[int, str]:
        engine = create_engine_from_url(db(name))
        child = Alembic(db(name), "upgrade", "head", x={"batch_size": "60", "pause_ms": "150"})
        try:
            assert child.wait_for_batches(engine, BACKFILL_JOB, 2), child.output
            if name.endswith("fork"):  # a child of the server, not of this process
                parent = Path(f"/proc/{child.proc.pid}/stat").read_text().rsplit(")", 1)[1]
                assert int(parent.split()[1]) != os.getpid()
            child.proc.send_signal(signal.SIGINT)
            status = child.wait()
        finally:
            engine.dispose()
        return status, re.sub(r"\d[\d,]*", "N", child.output.splitlines()[-1])

    _both_ways(monkeypatch, interrupted, ["seeded-fork", "seeded-exec"])
