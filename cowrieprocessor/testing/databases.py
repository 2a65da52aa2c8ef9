"""The suite's one throwaway-database factory: empty databases, copies of seeded ones,
and databases already migrated (copies of a template, :func:`copy_migrated`).

On SQLite a database is a file in a test's temporary folder; on PostgreSQL it is a
database on the test server (``pg_server_url``), created here and dropped with ``FORCE``
by :meth:`Databases.close`. The fixtures in ``tests/conftest.py`` (``pg_url``,
``sqlite_url``, ``db_url``, ``databases``) and the reliability datasets all come from it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sqlite3
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa


def dialect_params() -> list[Any]:
    """The two dialects as pytest parameters, PostgreSQL's marked ``postgres``."""
    import pytest  # only a test run asks for them: the package does not need pytest

    return [
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
        return self._create(_name(), None)

    def new_icu(self) -> str | None:
        """A fresh, empty PostgreSQL database whose default collation is ICU's ``en-US``,
        where strings sort unlike in Python (``'_9' < 'a-b' < 'Ab' < 'B'``), as under
        most production locales; None when the server cannot make one (before 15, or
        built without ICU). Migrate it with ``alembic`` itself: a copy of a migrated
        template would bring the template's collation."""
        assert self.admin is not None, "PostgreSQL only"
        with self.admin.connect() as conn:
            if (conn.dialect.server_version_info or (0,)) < (15,) or not conn.execute(
                sa.text("SELECT 1 FROM pg_collation WHERE collprovider = 'i' LIMIT 1")
            ).first():
                return None
        return self._create(_name(), "template0", icu=True)

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
        return self._create(name, sa.make_url(url).database)

    def _create(self, name: str, template: str | None, *, icu: bool = False) -> str:
        if self.admin is None:
            url = f"sqlite:///{self.folder / (name + '.sqlite')}"
        else:
            with self.admin.connect() as conn:
                create_database(conn, name, template, icu=icu)
            url = self.admin.url.set(database=name).render_as_string(hide_password=False)
        self.created.append(url)
        return url

    def close(self) -> None:
        """Drop every database made here (SQLite files go with their temporary folder)."""
        if self.admin is None:
            return
        with self.admin.connect() as conn:
            for url in self.created:
                drop_database(conn, str(sa.make_url(url).database))
        self.admin.dispose()


def _name() -> str:
    return f"t_{uuid.uuid4().hex[:16]}"


def create_database(
    conn: sa.Connection, name: str, template: str | None = None, *, icu: bool = False
) -> None:
    """``CREATE DATABASE name [TEMPLATE template]``, the names quoted by the dialect.

    On PostgreSQL 15+ with ``STRATEGY FILE_COPY``: the template's files are copied
    between two checkpoints, where 15's default (``WAL_LOG``) writes every block of the
    copy into the WAL as well. A throwaway copy needs no WAL; the suite makes about 420
    databases per run (docs/development.md has what each way cost).
    """
    quote = conn.dialect.identifier_preparer.quote
    statement = f"CREATE DATABASE {quote(name)}"
    if template is not None:
        statement += f" TEMPLATE {quote(template)}"
    if icu:  # ICU's en-US as the default collation (PostgreSQL 15+, from template0)
        statement += " LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"
    if (conn.dialect.server_version_info or (0,)) >= (15,):
        statement += " STRATEGY FILE_COPY"
    conn.execute(sa.text(statement))


def drop_database(conn: sa.Connection, name: str, *, force: bool = True) -> None:
    """``DROP DATABASE IF EXISTS name``, quoted by the dialect; ``force``: its sessions
    are ended first (``WITH (FORCE)``, PostgreSQL 13+), else a connected one fails it."""
    quoted = conn.dialect.identifier_preparer.quote(name)
    conn.execute(sa.text(f"DROP DATABASE IF EXISTS {quoted}{' WITH (FORCE)' if force else ''}"))


# --- migrated templates ---------------------------------------------------------------
#
# Most tests start from an empty database migrated to 0001, 0002 or head: the same
# revisions on the same empty schema, every time. Each (server, target) is migrated once
# per test process into a template; a fresh database is then made a copy of it
# (``CREATE DATABASE ... TEMPLATE`` on PostgreSQL, SQLite's backup API): the same catalog
# and rows in a tenth of the time. Only a database nothing has touched yet is copied
# (no schema, table, extension or setting of its own, nobody connected), reached as the
# template's owner without options, and only while no ``COWRIE_BACKFILL_*`` variable
# could change what head's backfill does: anything else runs the revisions.

_TEMPLATES: dict[tuple[str, str], str] = {}
_SKIP_TEMPLATES = "COWRIE_TEST_NO_TEMPLATES"  # set: every migration runs its revisions


def copy_migrated(url: str, target: str, migrate: Callable[[str], None]) -> bool:
    """Make the untouched database ``url`` a copy of one that ``migrate`` brought to
    ``target`` (True); False, having done nothing, when it cannot be a copy."""
    parsed = sa.make_url(url)
    if os.environ.get(_SKIP_TEMPLATES) or parsed.query:
        return False
    if any(name.startswith("COWRIE_BACKFILL_") for name in os.environ):
        return False
    if parsed.get_backend_name() == "sqlite":
        return _copy_sqlite(parsed, target, migrate)
    if parsed.get_backend_name() == "postgresql" and parsed.username == "postgres":
        return _copy_postgres(parsed, target, migrate)
    return False


def _copy_sqlite(url: sa.URL, target: str, migrate: Callable[[str], None]) -> bool:
    path = Path(str(url.database))
    if not url.database or (path.exists() and path.stat().st_size > 0):
        return False
    template = _TEMPLATES.get(("sqlite", target))
    if template is None:
        folder = tempfile.mkdtemp(prefix="cowrie-templates-")
        atexit.register(shutil.rmtree, folder, True)
        template = f"sqlite:///{Path(folder) / (target + '.sqlite')}"
        migrate(template)
        _TEMPLATES["sqlite", target] = template
    src, dst = sqlite3.connect(sqlite_path(template)), sqlite3.connect(path)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    return True


# what makes a PostgreSQL database touched: any of these counts more than zero
_TOUCHED = sa.text(
    """
    SELECT (SELECT count(*) FROM pg_namespace
            WHERE nspname NOT IN ('public', 'pg_catalog', 'information_schema', 'pg_toast')
              AND nspname NOT LIKE 'pg\\_temp\\_%' AND nspname NOT LIKE 'pg\\_toast\\_temp\\_%')
         + (SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace)
         + (SELECT count(*) FROM pg_type WHERE typnamespace = 'public'::regnamespace)
         + (SELECT count(*) FROM pg_proc WHERE pronamespace = 'public'::regnamespace)
         + (SELECT count(*) FROM pg_extension WHERE extname <> 'plpgsql')
         + (SELECT count(*) FROM pg_db_role_setting s JOIN pg_database d
              ON d.oid = s.setdatabase WHERE d.datname = current_database())
    """
)
_OTHERS = sa.text(
    "SELECT count(*) FROM pg_stat_activity WHERE datname = :name AND pid <> pg_backend_pid()"
)


def _copy_postgres(url: sa.URL, target: str, migrate: Callable[[str], None]) -> bool:
    name = str(url.database)
    admin = sa.create_engine(
        url.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool
    )
    own = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with own.connect() as conn:
            if conn.execute(_TOUCHED).scalar_one():
                return False
        with admin.connect() as conn:
            key = (f"{url.host}:{url.port}", target)
            template = _TEMPLATES.get(key)
            if template is None:
                template = f"tmpl_{uuid.uuid4().hex[:12]}"
                create_database(conn, template)
                migrate(url.set(database=template).render_as_string(hide_password=False))
                _TEMPLATES[key] = template
                atexit.register(_drop_template, url.set(database="postgres"), template)
            if conn.execute(_OTHERS, {"name": name}).scalar_one():
                return False
            drop_database(conn, name, force=False)
            create_database(conn, name, template)
        return True
    finally:
        own.dispose()
        admin.dispose()


def _drop_template(server: sa.URL, template: str) -> None:
    """At exit: the template goes (on an ephemeral server, with it; it may be gone)."""
    engine = sa.create_engine(
        server, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5}
    )
    try:
        with engine.connect() as conn:
            drop_database(conn, template)
    except sa.exc.OperationalError:
        pass  # the throwaway server was stopped first
    finally:
        engine.dispose()
