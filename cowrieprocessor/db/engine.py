"""Engine factory with per-dialect defaults that an operator would otherwise forget.

PostgreSQL: ``pool_pre_ping`` (a deploy often starts on connections that a proxy has
silently dropped) and an ``application_name`` so the backends show up by name in
``pg_stat_activity``.

SQLite: foreign keys on (SQLite ignores them otherwise), WAL (readers never block the
backfill's writer and vice versa), a busy timeout (wait for a lock rather than fail at
once), and real transactions: the stdlib driver's implicit BEGIN is switched off and
SQLAlchemy's own ``begin`` emits it, as SQLAlchemy's documentation recommends. A
connection may ask for ``BEGIN IMMEDIATE`` with the execution option
``sqlite_begin="IMMEDIATE"``: a batch that reads and then writes takes the write lock
up front, so it waits politely instead of failing with SQLITE_BUSY half way.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL
from sqlalchemy.exc import NoSuchModuleError

from cowrieprocessor.db.integrity import as_unusable, require_not_a_folder
from cowrieprocessor.settings import SettingsError, mask_url, parse_url

_SQLITE_BEGIN_MODES = frozenset({"DEFERRED", "IMMEDIATE", "EXCLUSIVE"})


def is_sqlite_memory(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def _is_plain_sqlite_file(url: URL) -> bool:
    """A file path whose folder we may create (not memory, not the ``file:`` URI form)."""
    uri = str(url.query.get("uri", "")).lower() in ("true", "1")
    database = url.database or ""
    return not is_sqlite_memory(url) and not uri and not database.startswith("file:")


def create_engine_from_url(
    url: str | URL,
    *,
    application_name: str = "cowrieprocessor",
    sqlite_busy_timeout_ms: int = 30_000,
    **kwargs: Any,
) -> Engine:
    """Create an engine for ``url`` with this project's per-dialect defaults.

    An unsupported backend, an asynchronous driver or one that is not installed is a
    :class:`SettingsError` here, before anything is created, so ``cowrie-db`` and
    Alembic's ``env.py`` both say it in one line."""
    parsed = parse_url(url) if isinstance(url, str) else url
    backend = parsed.get_backend_name()
    if parsed.drivername == "postgresql":
        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; we ship psycopg2.
        parsed = parsed.set(drivername="postgresql+psycopg2")
    _require_driver(parsed)
    if backend == "postgresql":
        connect_args = dict(kwargs.pop("connect_args", {}))
        connect_args.setdefault("application_name", application_name)
        return create_engine(parsed, pool_pre_ping=True, connect_args=connect_args, **kwargs)
    if backend == "sqlite":
        if _is_plain_sqlite_file(parsed):
            _make_folder(Path(str(parsed.database)).expanduser().parent, parsed)
        engine = create_engine(parsed, **kwargs)
        _install_sqlite_pragmas(
            engine,
            sqlite_busy_timeout_ms,
            wal=not is_sqlite_memory(parsed),
            path=str(parsed.database or "") if _is_plain_sqlite_file(parsed) else "",
        )
        return engine
    raise AssertionError(f"backend {backend!r} passed _require_driver")  # pragma: no cover


def _make_folder(folder: Path, url: URL) -> None:
    """The embedded default's folder (or a new file's), created on demand; a path that
    cannot be one (under a file, no permission) is a one-line SettingsError."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SettingsError(
            f"database URL {mask_url(url)}: cannot create its folder {folder} "
            f"({exc.strerror or exc}); check the file's path"
        ) from None


SUPPORTED_FORMS = "postgresql://USER@HOST/DB (PostgreSQL 13+, psycopg2) or sqlite:///PATH"
# The package that provides a driver module, where pip's name differs from the import.
DRIVER_PACKAGES = {"psycopg": "psycopg[binary]", "MySQLdb": "mysqlclient"}
# Common misspellings of a supported backend, and the spelling SQLAlchemy knows.
BACKEND_SPELLINGS = {"postgres": "postgresql", "pgsql": "postgresql", "sqlite3": "sqlite"}


def _require_driver(url: URL) -> None:
    """Refuse, in one line naming the driver and the way out, a backend this project
    does not support, an asynchronous driver (everything here is synchronous: the
    backfill engine, Alembic's env.py), or a driver whose module is not installed."""
    backend, masked = url.get_backend_name(), mask_url(url)
    if backend not in ("postgresql", "sqlite"):
        spelled = BACKEND_SPELLINGS.get(backend)
        hint = f" (did you mean {spelled}://?)" if spelled else ""
        raise SettingsError(
            f"database URL {masked}: unsupported backend {backend!r}{hint}; use {SUPPORTED_FORMS}"
        )
    try:
        dialect = url.get_dialect()
    except NoSuchModuleError:
        raise SettingsError(
            f"database URL {masked}: SQLAlchemy has no {backend} driver "
            f"{url.get_driver_name()!r}; use {SUPPORTED_FORMS}"
        ) from None
    if dialect.is_async:
        raise SettingsError(
            f"database URL {masked}: {dialect.driver} is an asynchronous driver and "
            f"cowrieprocessor is synchronous; use {SUPPORTED_FORMS}"
        )
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        module = (exc.name or dialect.driver).split(".")[0]
        package = DRIVER_PACKAGES.get(module, module)
        raise SettingsError(
            f"database URL {masked}: its driver {dialect.driver} is not installed (`pip "
            f"install '{package}'` into this environment); or use {SUPPORTED_FORMS}"
        ) from None


def _install_sqlite_pragmas(engine: Engine, busy_timeout_ms: int, *, wal: bool, path: str) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        require_not_a_folder(path)
        # Hand transaction control to SQLAlchemy (see the module docstring).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            if wal:
                cursor.execute("PRAGMA journal_mode = WAL")
                # WAL + NORMAL is durable against application crashes (kill -9);
                # only an OS crash can lose the very last commits.
                cursor.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.DatabaseError as exc:
            # journal_mode reads page 1: a text file (SQLITE_NOTADB), a truncated or a
            # garbled one fails here, named with the file and what to do instead.
            unusable = as_unusable(path, exc)
            if unusable is None:
                raise
            raise unusable from exc
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        options = conn.get_execution_options()
        if options.get("isolation_level") == "AUTOCOMMIT":
            return  # Alembic's autocommit_block(): each statement commits on its own.
        mode = str(options.get("sqlite_begin", "DEFERRED")).upper()
        if mode not in _SQLITE_BEGIN_MODES:
            raise SettingsError(f"sqlite_begin must be one of {sorted(_SQLITE_BEGIN_MODES)}")
        conn.exec_driver_sql(f"BEGIN {mode}")
