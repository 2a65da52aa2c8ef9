"""The benchmark's databases: one generated dataset per dialect, and fresh copies of it.

A dataset is built once per size and shape, exactly as a deploy would find the database,
then filled by :func:`cowrieprocessor.demo.generate` (the generator behind
``cowrie-db demo-data``), then statistics. The shapes:

* ``current``: our own schema, the real ``alembic upgrade 0002_snapshot_columns``;
* ``partitioned`` (PostgreSQL only): ours, with ``session_summaries`` and ``raw_events``
  hash-partitioned (8 partitions each) before the deploy
  (:mod:`cowrieprocessor.testing.partitioned`), then 0002;
* ``field`` (PostgreSQL only): the catalog of a database in the field, built by
  upstream cowrieprocessor's schema code at its version 17
  (``cowrieprocessor.testing.field_schema.build_postgres``), with only the ``idx_``
  index family, as on a production database that went through the versions
  (/work/shared/reference/upstream-schema.md): ``json`` columns, GENERATED inventory
  columns, the snapshot columns, their constraints and three of their indexes already
  there, a ``schema_state`` table and no ``alembic_version``.

Each measurement then gets its own copy, so every approach starts from the same bytes:

* PostgreSQL: ``CREATE DATABASE ... TEMPLATE`` (``STRATEGY FILE_COPY`` on 15+), then a
  ``CHECKPOINT`` so that flushing the copy does not land inside the measurement;
* SQLite: a file copy (any stale ``-wal``/``-shm`` of an earlier copy removed first),
  then ``sync``.

``python -m benchmarks.datasets DIALECT URL SESSIONS IPS [SEED [SHAPE]]`` builds one
dataset; the runner starts one such process per dialect, in parallel.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from cowrieprocessor.db.engine import create_engine_from_url
from cowrieprocessor.settings import PROJECT_ROOT
from cowrieprocessor.testing.databases import create_database, drop_database

ALEMBIC = Path(sys.executable).parent / "alembic"
BEFORE = "0002_snapshot_columns"
SHAPES = ("current", "field", "partitioned")
FIELD_DIALECTS = ("postgresql",)  # upstream's SQLite path has no inventory tables
PARTITIONS = 8  # the partitioned shape: hash partitions of session_summaries and raw_events


def alembic(url: str, *args: str, extra_x: dict[str, str] | None = None) -> list[str]:
    """The real ``alembic`` command line for ``url`` (no environment URL leaks in)."""
    x: list[str] = ["-x", f"db={url}"]
    for key, value in (extra_x or {}).items():
        x += ["-x", f"{key}={value}"]
    return [str(ALEMBIC), "-c", str(PROJECT_ROOT / "alembic.ini"), *x, *args]


def clean_env() -> dict[str, str]:
    """The environment for child processes: no URL or backfill knob from the caller."""
    return {
        k: v
        for k, v in os.environ.items()
        if k != "COWRIE_DB_URL" and not k.startswith("COWRIE_BACKFILL_")
    }


def build_schema(dialect: str, url: str, shape: str = "current") -> None:
    """The empty database as the shape has it: ours at 0002, or the field's catalog."""
    if shape == "field":
        if dialect not in FIELD_DIALECTS:
            raise ValueError(f"the field shape exists on {', '.join(FIELD_DIALECTS)} only")
        # imported when used: it is test tooling (and may not exist in an older tree)
        field_schema: Any = importlib.import_module("cowrieprocessor.testing.field_schema")
        engine = create_engine_from_url(url, application_name="cowrie-bench-data")
        try:
            with engine.begin() as conn:
                field_schema.build_postgres(conn, index_families="idx")
        finally:
            engine.dispose()
        return
    if shape not in ("current", "partitioned"):
        raise ValueError(f"unknown shape {shape!r}: one of {', '.join(SHAPES)}")
    if shape == "partitioned":
        if dialect not in FIELD_DIALECTS:
            raise ValueError(f"the partitioned shape exists on {', '.join(FIELD_DIALECTS)} only")
        _alembic_upgrade(url, "0001_baseline")
        partitioned: Any = importlib.import_module("cowrieprocessor.testing.partitioned")
        engine = create_engine_from_url(url, application_name="cowrie-bench-data")
        try:
            with engine.begin() as conn:
                partitioned.partition_tables(conn, partitioned.HASH, PARTITIONS)
        finally:
            engine.dispose()
    _alembic_upgrade(url, BEFORE)


def _alembic_upgrade(url: str, revision: str) -> None:
    done = subprocess.run(
        alembic(url, "upgrade", revision),
        cwd=PROJECT_ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"alembic upgrade {revision} failed:\n{done.stderr}")


def build(
    dialect: str, url: str, sessions: int, ips: int, seed: int = 1, shape: str = "current"
) -> dict[str, float]:
    """Build the shape's schema, generate the data, gather statistics. Returns timings."""
    from cowrieprocessor.demo import DemoSpec, generate

    started = time.monotonic()
    build_schema(dialect, url, shape)
    engine = create_engine_from_url(url, application_name="cowrie-bench-data")
    try:
        result = generate(engine, DemoSpec(sessions=sessions, ips=ips, seed=seed))
        generated = time.monotonic()
        if dialect == "postgresql":  # as autovacuum would have left a production table
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(sa.text("VACUUM (ANALYZE)"))
    finally:
        engine.dispose()
    if dialect == "sqlite":  # fold the WAL into the file: copies are then one file
        database = sa.make_url(url).database
        con = sqlite3.connect(str(database))
        try:
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            con.close()
    return {
        "generate_seconds": round(result.seconds, 2),
        "total_seconds": round(time.monotonic() - started, 2),
        "statistics_seconds": round(time.monotonic() - generated, 2),
        "raw_events": result.raw_events,
        "unmatched_sessions": result.unmatched_sessions,
    }


@dataclass
class PostgresData:
    """A template database on a server, and copies of it."""

    server_url: str
    template: str

    def _admin(self) -> sa.Engine:
        return sa.create_engine(self.server_url, isolation_level="AUTOCOMMIT")

    def url_for(self, name: str) -> str:
        return sa.make_url(self.server_url).set(database=name).render_as_string(False)

    def create_template(self) -> str:
        admin = self._admin()
        try:
            with admin.connect() as conn:
                drop_database(conn, self.template, force=False)
                create_database(conn, self.template)
        finally:
            admin.dispose()
        return self.url_for(self.template)

    def copy(self, name: str) -> str:
        admin = self._admin()
        try:
            with admin.connect() as conn:
                drop_database(conn, name, force=False)
                create_database(conn, name, self.template)
                conn.execute(sa.text("CHECKPOINT"))
        finally:
            admin.dispose()
        return self.url_for(name)

    def drop(self, name: str) -> None:
        admin = self._admin()
        try:
            with admin.connect() as conn:
                drop_database(conn, name)
        finally:
            admin.dispose()

    def drop_template(self) -> None:
        self.drop(self.template)


@dataclass
class SqliteData:
    """A template file in a work folder, and copies of it."""

    folder: Path
    template: str

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.sqlite"

    def url_for(self, name: str) -> str:
        return f"sqlite:///{self.path(name)}"

    def create_template(self) -> str:
        self.drop(self.template)
        return self.url_for(self.template)

    def copy(self, name: str) -> str:
        self.drop(name)
        shutil.copyfile(self.path(self.template), self.path(name))
        os.sync()
        return self.url_for(name)

    def drop(self, name: str) -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{self.path(name)}{suffix}").unlink(missing_ok=True)

    def drop_template(self) -> None:
        self.drop(self.template)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    dialect, url, sessions, ips = args[0], args[1], int(args[2]), int(args[3])
    seed = int(args[4]) if len(args) > 4 else 1
    shape = args[5] if len(args) > 5 else "current"
    print(json.dumps(build(dialect, url, sessions, ips, seed, shape)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
