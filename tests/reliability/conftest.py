"""The reliability datasets, built once per dialect for the whole package: seeding and
the uninterrupted reference runs are most of the cost, and every test copies them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cowrieprocessor.testing.databases import Databases, dialect_params
from cowrieprocessor.testing.reliability.datasets import (
    SCALE_OUT,
    SCALE_OUT_IDS,
    Dataset,
    build_dataset,
)
from cowrieprocessor.testing.seed import seed_random

DIALECTS = dialect_params()


@pytest.fixture(scope="package")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("reliability")


def _databases(request: pytest.FixtureRequest, dialect: str, folder: Path) -> Databases:
    server = request.getfixturevalue("pg_server_url") if dialect == "postgresql" else None
    return Databases(dialect, folder, server)


@pytest.fixture(scope="package", params=DIALECTS)
def mixed(request: pytest.FixtureRequest, scratch: Path) -> Iterator[Dataset]:
    """3,000 sessions of the usual mix in batches of 50: 122 batches in under a second."""
    dbs = _databases(request, request.param, scratch)
    try:
        yield build_dataset(
            dbs,
            lambda conn: seed_random(conn, 3000, 300),
            {"batch_size": "50"},
            observe=True,
        )
    finally:
        dbs.close()


@pytest.fixture(scope="package", params=DIALECTS)
def large(request: pytest.FixtureRequest, scratch: Path) -> Iterator[Dataset]:
    """30,000 sessions, batches of 250, no pause: an upgrade of several seconds."""
    dbs = _databases(request, request.param, scratch)
    try:
        yield build_dataset(
            dbs, lambda conn: seed_random(conn, 30_000, 3000), {"batch_size": "250"}, observe=True
        )
    finally:
        dbs.close()


@pytest.fixture(scope="package", params=SCALE_OUT, ids=SCALE_OUT_IDS)
def scaled_out(
    request: pytest.FixtureRequest, pg_server_url: str, scratch: Path
) -> Iterator[Dataset]:
    """:func:`mixed`'s 3,000 sessions, starting over 400 days (some past the monthly
    partitions, in the DEFAULT one), in batches of 50: about 8 batches per partition."""
    partition, join_back = request.param
    dbs = Databases("postgresql", scratch, pg_server_url)
    try:
        yield build_dataset(
            dbs,
            lambda conn: seed_random(conn, 3000, 300, spread_days=400),
            {"batch_size": "50", "join_back": join_back},
            observe=True,
            partition=partition,
        )
    finally:
        dbs.close()


@pytest.fixture(scope="package")
def pg_small(pg_server_url: str, scratch: Path) -> Iterator[Dataset]:
    """400 sessions on PostgreSQL, for the slow-trigger faults."""
    dbs = Databases("postgresql", scratch, pg_server_url)
    try:
        yield build_dataset(dbs, lambda conn: seed_random(conn, 400, 60), {}, observe=False)
    finally:
        dbs.close()


@pytest.fixture(scope="package")
def sqlite_small(scratch: Path) -> Iterator[Dataset]:
    """3,000 sessions on SQLite, for the lock, disk and permission faults."""
    dbs = Databases("sqlite", scratch)
    yield build_dataset(dbs, lambda conn: seed_random(conn, 3000, 300), {}, observe=False)
