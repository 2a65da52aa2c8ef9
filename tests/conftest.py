"""Shared fixtures: throwaway databases (:mod:`cowrieprocessor.testing.databases`) on SQLite
and on a real PostgreSQL server.

PostgreSQL comes from ``TEST_POSTGRES_URL`` (an existing server where we may create
databases) or is started here by :class:`EphemeralPostgres` once per test session.
If neither works the PostgreSQL tests are skipped with the reason, unless ``CI`` is
set: there a missing PostgreSQL is a failure, because a green CI must mean the
production dialect was tested.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import NoReturn

import pytest
import sqlalchemy as sa

from cowrieprocessor.db.engine import create_engine_from_url
from cowrieprocessor.testing.databases import Databases, dialect_params
from cowrieprocessor.testing.ephemeral_pg import EphemeralPostgres, PostgresUnavailable
from cowrieprocessor.testing.standby import StreamingStandby

DIALECTS = dialect_params()

# A test that uses any of these needs PostgreSQL: it gets the ``postgres`` mark, so that
# ``-m postgres`` (``make test-all``'s second server) selects every PostgreSQL test.
POSTGRES_FIXTURES = frozenset({"pg_server_url", "pg_databases", "pg_url", "standby"})


# Fixtures built once per worker and shared by many tests (a second server, a wheel in
# a virtualenv, seeded templates, the reliability datasets). Under pytest-xdist
# (``make test``: ``-n 2 --dist loadgroup``) the tests that use one go to the same
# worker, so that it is built once, not once per worker: their ``xdist_group`` is the
# fixture's name and, when it is parametrized, its parameter.
SHARED_FIXTURES = (
    "standby",
    "venv",
    "seeded_template",
    "bases",
    "mixed",
    "large",
    "scaled_out",
    "pg_small",
    "sqlite_small",
)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups (its hook comes first else)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if POSTGRES_FIXTURES & names:
            item.add_marker(pytest.mark.postgres)
        shared = next((name for name in SHARED_FIXTURES if name in names), None)
        if shared is not None and item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(_group_of(item, shared)))


def pytest_configure(config: pytest.Config) -> None:
    """Refuse a pytest that silently loses ``--dist loadgroup``: pytest 9.2 with
    pytest-xdist 3.8 reports no group (pytest-xdist#1386), and every shared fixture is
    then built on every worker (hence ``pytest<9.2`` in pyproject.toml)."""
    if config.getoption("dist", default="no") != "loadgroup":
        return  # a worker's own dist is "no": this runs where the tests are scheduled
    if _release(pytest.__version__) >= (9, 2) and _release(version("pytest-xdist")) < (3, 9):
        raise pytest.UsageError(
            f"pytest {pytest.__version__} with pytest-xdist {version('pytest-xdist')} does not "
            "group tests under --dist loadgroup (pytest-xdist#1386): install pytest<9.2 "
            "(make install does) or run without -n"
        )


def _release(text: str) -> tuple[int, ...]:
    """The leading numbers of a version string: "9.2.0.dev1" -> (9, 2, 0)."""
    return tuple(int(part) for part in re.findall(r"\d+", text.split("+")[0])[:3])


def _group_of(item: pytest.Item, fixture: str) -> str:
    callspec = getattr(item, "callspec", None)
    params = callspec.params if callspec is not None else {}
    return f"{fixture}[{params[fixture]}]" if fixture in params else fixture


def cannot_run(what: str, why: Exception) -> NoReturn:
    """Skip, loudly; under CI (``CI`` set) fail: a green CI must mean PostgreSQL was tested."""
    message = f"{what} cannot run: {why}"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI is set, so this is a failure, not a skip)")
    pytest.skip(f"!!! SKIPPED - {message}")


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    external = os.environ.get("TEST_POSTGRES_URL")
    if external:
        yield external
        return
    with _started(EphemeralPostgres(), "PostgreSQL tests") as url:
        yield url


@contextmanager
def _started(server: EphemeralPostgres, what: str) -> Iterator[str]:
    """The server started (or ``what`` cannot run), stopped afterwards."""
    try:
        url = server.start()
    except PostgresUnavailable as exc:
        cannot_run(what, exc)
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture
def small_wal_databases(tmp_path: Path) -> Iterator[Databases]:
    """Throwaway databases on a server of their own that writes whole pages after each
    checkpoint (``full_page_writes``, off on the test servers) and checkpoints after
    every 16 MB of WAL (the smallest ``max_wal_size``): a small backfill then forces
    checkpoint after checkpoint, as 5M sessions do with 4GB (tests/test_checkpoints.py)."""
    server = EphemeralPostgres(
        extra_settings={"full_page_writes": "on", "min_wal_size": "32MB", "max_wal_size": "32MB"}
    )
    with _started(server, "the small-WAL server") as url:
        dbs = Databases("postgresql", tmp_path, url)
        try:
            yield dbs
        finally:
            dbs.close()


@pytest.fixture(scope="session")
def standby() -> Iterator[StreamingStandby]:
    """A primary of its own and its streaming standby (tests of throttling on replica lag)."""
    primary = EphemeralPostgres()
    replica = StreamingStandby(primary)
    try:
        primary.start()
        replica.start()
    except PostgresUnavailable as exc:
        replica.stop()
        primary.stop()
        cannot_run("PostgreSQL standby tests", exc)
    try:
        yield replica
    finally:
        replica.stop()
        primary.stop()


@pytest.fixture
def pg_databases(pg_server_url: str, tmp_path: Path) -> Iterator[Databases]:
    """Throwaway databases on the test server, all dropped after the test."""
    dbs = Databases("postgresql", tmp_path, pg_server_url)
    try:
        yield dbs
    finally:
        dbs.close()


@pytest.fixture
def sqlite_databases(tmp_path: Path) -> Databases:
    """Throwaway SQLite files in the test's temporary folder."""
    return Databases("sqlite", tmp_path)


@pytest.fixture
def pg_url(pg_databases: Databases) -> str:
    """A fresh, empty database on the test server, dropped afterwards."""
    return pg_databases.new()


@pytest.fixture
def sqlite_url(sqlite_databases: Databases) -> str:
    """A fresh, empty SQLite file."""
    return sqlite_databases.new()


@pytest.fixture(params=DIALECTS)
def db_url(request: pytest.FixtureRequest) -> str:
    """A fresh, empty database on each dialect in turn."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def databases(request: pytest.FixtureRequest, db_url: str) -> Databases:
    """More throwaway databases on the dialect of ``db_url`` (dropped with it)."""
    sqlite = sa.make_url(db_url).get_backend_name() == "sqlite"
    dbs = request.getfixturevalue("sqlite_databases" if sqlite else "pg_databases")
    assert isinstance(dbs, Databases)
    return dbs


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    eng = create_engine_from_url(db_url)
    try:
        yield eng
    finally:
        eng.dispose()


# pytest-alembic: its built-in checks run once per dialect through this fixture.
@pytest.fixture(params=DIALECTS)
def alembic_engine(request: pytest.FixtureRequest) -> Iterator[sa.Engine]:
    url = (
        request.getfixturevalue("sqlite_url")
        if request.param == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    eng = create_engine_from_url(url)
    try:
        yield eng
    finally:
        eng.dispose()
