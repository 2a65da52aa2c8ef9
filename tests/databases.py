"""The suite's one throwaway-database factory: empty databases and copies of seeded ones.

On SQLite a database is a file in a test's temporary folder; on PostgreSQL it is a
database on the test server (``pg_server_url``), created here and dropped with ``FORCE``
by :meth:`Databases.close`. The fixtures in ``tests/conftest.py`` (``pg_url``,
``sqlite_url``, ``db_url``, ``databases``) and the reliability datasets all come from it.
"""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

DIALECTS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]


def sqlite_path(url: str) -> str:
    """The file behind a ``sqlite:///`` URL."""
    return str(sa.make_url(url).database)


class Databases:
    """Throwaway databases on one dialect: empty ones, and copies of a seeded one.

    ``server_url`` (PostgreSQL only) names a server where databases may be created;
    without it the databases are SQLite files in ``folder``.
    """

    def __init__(self, dialect: str, folder: Path, server_url: str | None = None) -> None:
        if (dialect == "postgresql") != (server_url is not None):
            raise ValueError(f"{dialect}: a server URL is for PostgreSQL, and it needs one")
        self.dialect = dialect
        self.folder = folder
        self.created: list[str] = []
        self.admin = (
            sa.create_engine(server_url, isolation_level="AUTOCOMMIT") if server_url else None
        )

    def new(self) -> str:
        """A fresh, empty database; its URL (with the password, for the child processes)."""
        name = _name()
        return self._create(name, f'CREATE DATABASE "{name}"')

    def clone(self, url: str) -> str:
        """A copy of ``url`` (whose engines must all be disposed on PostgreSQL)."""
        name = _name()
        if self.admin is None:
            target = self._create(name, None)
            src, dst = sqlite3.connect(sqlite_path(url)), sqlite3.connect(sqlite_path(target))
            try:
                src.backup(dst)
            finally:
                src.close()
                dst.close()
            return target
        source = sa.make_url(url).database
        return self._create(name, f'CREATE DATABASE "{name}" TEMPLATE "{source}"')

    def _create(self, name: str, statement: str | None) -> str:
        if self.admin is None:
            url = f"sqlite:///{self.folder / (name + '.sqlite')}"
        else:
            with self.admin.connect() as conn:
                conn.execute(sa.text(statement or ""))
            url = self.admin.url.set(database=name).render_as_string(hide_password=False)
        self.created.append(url)
        return url

    def close(self) -> None:
        """Drop every database made here (SQLite files go with their temporary folder)."""
        if self.admin is None:
            return
        with self.admin.connect() as conn:
            for url in self.created:
                name = sa.make_url(url).database
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.admin.dispose()


def _name() -> str:
    return f"t_{uuid.uuid4().hex[:16]}"
