"""The suite's own promise: without PostgreSQL it skips loudly, and under CI it fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cowrieprocessor.settings import PROJECT_ROOT

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
