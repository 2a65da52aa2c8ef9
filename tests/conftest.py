"""Shared fixtures: a real SQLite file and a real, throwaway PostgreSQL server.

PostgreSQL comes from ``TEST_POSTGRES_URL`` (an existing server where we may create
databases) or is started here by :class:`EphemeralPostgres` once per test session.
If neither works the PostgreSQL tests are skipped with the reason, unless ``CI`` is
set: there a missing PostgreSQL is a failure, because a green CI must mean the
production dialect was tested.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from cowrieprocessor.db.engine import create_engine_from_url
from cowrieprocessor.testing.ephemeral_pg import EphemeralPostgres, PostgresUnavailable

DIALECTS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    external = os.environ.get("TEST_POSTGRES_URL")
    if external:
        yield external
        return
    server = EphemeralPostgres()
    try:
        url = server.start()
    except PostgresUnavailable as exc:
        message = f"PostgreSQL tests cannot run: {exc}"
        if os.environ.get("CI"):
            pytest.fail(f"{message} (CI is set, so this is a failure, not a skip)")
        pytest.skip(f"!!! SKIPPED - {message}")
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server_url: str) -> Iterator[str]:
    """A fresh, empty database on the test server, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    admin = sa.create_engine(pg_server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(pg_server_url).set(database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cowrie.sqlite'}"


@pytest.fixture(params=DIALECTS)
def db_url(request: pytest.FixtureRequest) -> str:
    """A fresh, empty database on each dialect in turn."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("pg_url"))


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
