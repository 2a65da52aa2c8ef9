"""An installed wheel deploys a database without a source checkout.

The wheel is built from this checkout and installed into a fresh virtualenv outside
it; every command runs from that virtualenv, in a folder outside the repository, with
``HOME`` and ``XDG_DATA_HOME`` in the test's folder. There is no ``alembic.ini`` and
no ``migrations/`` beside the package: ``cowrie-db upgrade`` must find the revisions
the wheel carries, fill a database (the backfill included), and ``downgrade`` it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from cowrieprocessor.settings import PROJECT_ROOT
from cowrieprocessor.testing import forkserver
from cowrieprocessor.testing.runners import child_env
from cowrieprocessor.testing.seed import read

BUILD_TIMEOUT = 600.0


@pytest.fixture(scope="session")  # its tests share one worker (conftest.SHARED_FIXTURES)
def venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A virtualenv, outside the repository, with the wheel of this checkout installed."""
    root = tmp_path_factory.mktemp("wheel")
    dist = root / "dist"
    # a copy of the checkout: building in place would leave build/ in it
    source = root / "source"
    shutil.copytree(
        PROJECT_ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "var", "build", "*.egg-info", "__pycache__", "results", ".*_cache"
        ),
    )

    def run(*argv: str) -> None:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False, cwd=root
        )
        assert done.returncode == 0, f"{' '.join(argv)}:\n{done.stdout}\n{done.stderr}"

    # A virtualenv without pip of its own: this environment's pip builds and installs
    # for its interpreter (``pip --python``), with its build isolation (the wheel's
    # build-system requirements, fetched into a throwaway environment). ensurepip and
    # compiling every dependency at install were 18 of the 27 s this took; a module is
    # compiled when it is first imported instead.
    env_dir = root / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", str(env_dir))
    pip = [sys.executable, "-m", "pip", "--python", str(env_dir / "bin" / "python")]
    run(*pip, "wheel", "--quiet", "--no-deps", "-w", str(dist), str(source))
    wheels = list(dist.glob("cowrieprocessor_migrations-*.whl"))
    assert len(wheels) == 1, wheels
    run(*pip, "install", "--quiet", "--no-compile", str(wheels[0]))
    yield env_dir


def installed(
    venv: Path, cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The installed ``cowrie-db``, run from ``cwd`` with a home of its own."""
    full = child_env({"HOME": str(cwd / "home"), "XDG_DATA_HOME": str(cwd / "xdg")})
    for inherited in ("COWRIE_DATA_DIR", "VIRTUAL_ENV"):
        full.pop(inherited, None)
    full.update(env or {})
    # forked from a Python of that virtualenv that has imported its libraries (it runs
    # the installed script file: testing/forkserver.py)
    return forkserver.run([str(venv / "bin" / "cowrie-db"), *args], full, cwd, BUILD_TIMEOUT)


def ok(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def test_the_wheel_carries_the_migrations_and_not_the_checkout(venv: Path, tmp_path: Path) -> None:
    where = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import cowrieprocessor.migrate as m; print(m.script_location()); "
            "print(m.in_checkout())",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=child_env(),
        check=True,
    ).stdout.split()
    assert where[1] == "False"
    location = Path(where[0])
    assert location.is_relative_to(venv) and location.name == "_migrations", location
    shipped = sorted(p.name for p in (location / "versions").glob("*.py"))
    in_checkout = sorted(p.name for p in (PROJECT_ROOT / "migrations" / "versions").glob("*.py"))
    assert shipped == in_checkout
    assert (location / "env.py").read_bytes() == (PROJECT_ROOT / "migrations/env.py").read_bytes()


@pytest.mark.parametrize(
    "dialect", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_an_installed_wheel_deploys_backfills_and_downgrades(
    venv: Path, tmp_path: Path, dialect: str, request: pytest.FixtureRequest
) -> None:
    if dialect == "postgresql":
        url: str = request.getfixturevalue("pg_url")
    else:
        url = f"sqlite:///{tmp_path / 'deploy' / 'cowrie.sqlite'}"
        (tmp_path / "deploy").mkdir()
    first = ok(installed(venv, tmp_path, "--db", url, "upgrade", "0002_snapshot_columns"))
    assert "Running upgrade 0001_baseline -> 0002_snapshot_columns" in first.stderr
    password = sa.make_url(url).password
    if password:  # printed masked, never in clear
        assert "***" in first.stderr and str(password) not in first.stdout + first.stderr
    ok(installed(venv, tmp_path, "--db", url, "demo-data", "--sessions", "400", "--ips", "60"))
    ok(installed(venv, tmp_path, "--db", url, "check"))
    before = read(url, _filled)  # what the loader wrote before the deploy
    up = ok(installed(venv, tmp_path, "--db", url, "upgrade", "--batch-size", "50"))
    assert "-> 0004_snapshot_indexes" in up.stderr
    assert "batch_size=50" in up.stderr  # the knob reached the data revision
    current = ok(installed(venv, tmp_path, "--db", url, "current"))
    assert "0004_snapshot_indexes (head)" in current.stdout
    history = ok(installed(venv, tmp_path, "--db", url, "history"))
    assert history.stdout.count(" -> ") == 4 and "(current)" in history.stdout
    ok(installed(venv, tmp_path, "--db", url, "verify", "--min-coverage", "50"))
    assert read(url, _filled) > before
    ok(installed(venv, tmp_path, "--db", url, "downgrade", "0002_snapshot_columns"))
    assert read(url, _filled) == before  # 0003's downgrade undid what it wrote, only that
    ok(installed(venv, tmp_path, "--db", url, "downgrade", "base"))
    assert ok(installed(venv, tmp_path, "--db", url, "current")).stdout.strip() == ""
    # nothing was written beside the installed package
    assert not list(venv.rglob("*.sqlite")) and not list(venv.rglob("var"))


def _filled(conn: sa.Connection) -> int:
    return int(
        conn.execute(
            sa.text("SELECT count(*) FROM session_summaries WHERE source_ip IS NOT NULL")
        ).scalar_one()
    )


def test_the_embedded_default_of_an_installed_package_is_in_the_user_data_dir(
    venv: Path, tmp_path: Path
) -> None:
    ok(installed(venv, tmp_path, "upgrade"))
    assert (tmp_path / "xdg" / "cowrieprocessor" / "cowrie.sqlite").is_file()
    assert not list(venv.rglob("*.sqlite"))
    ok(installed(venv, tmp_path, "upgrade", env={"COWRIE_DATA_DIR": str(tmp_path / "data")}))
    assert (tmp_path / "data" / "cowrie.sqlite").is_file()


def test_bad_input_to_the_migration_commands_is_refused_by_name(venv: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.sqlite'}"
    cases = {
        ("upgrade", "--batch-time", "soon"): "batch_time",
        ("upgrade", "-x", "nonsense"): "KEY=VALUE",
        ("upgrade", "-x", "batch_sise=10"): "batch_sise",
        ("upgrade", "no_such_revision"): "no_such_revision",
    }
    for argv, named in cases.items():
        done = installed(venv, tmp_path, "--db", url, *argv)
        assert done.returncode == 2, (argv, done.stdout, done.stderr)
        assert named in done.stderr, (argv, done.stderr)
    # a SQLite path that does not exist: only upgrade may create it
    missing = f"sqlite:///{tmp_path / 'typo.sqlite'}"
    done = installed(venv, tmp_path, "--db", missing, "downgrade", "base")
    assert done.returncode == 2 and "does not exist" in done.stderr
    assert not (tmp_path / "typo.sqlite").exists()
