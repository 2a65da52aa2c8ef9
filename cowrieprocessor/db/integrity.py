"""Is this SQLite file a sound database? Asked once, before the first write.

A file that is not a database (a text file, a dump, the wrong path) or one whose pages
are damaged must be refused before anything writes to it: SQLite reads lazily, so a
damaged page is found only when a statement reaches it, possibly after other tables
were already written (the backfill creates its progress table first). ``PRAGMA
quick_check`` reads every page of the file once (O(size), without checking that the
indexes match their tables, which ``integrity_check`` would add); that is the price of
refusing up front, paid by the commands that write and by ``cowrie-db check``.

PostgreSQL keeps its own pages sound (checksums, WAL): on other dialects this is a
no-op.
"""

from __future__ import annotations

import os

import sqlalchemy as sa
from sqlalchemy.exc import DatabaseError

from cowrieprocessor.errors import CowrieError

QUICK_CHECK_OK = "ok"
# A few lines of quick_check are enough to name the problem (it reports up to 100 by
# default); the first may be a "*** in database main ***" heading, skipped when named.
QUICK_CHECK_MAX_ERRORS = 3


class UnusableDatabase(CowrieError):
    """The database file cannot be used as it is (not a database, or damaged); nothing
    was written to it."""


def sqlite_file(conn: sa.Connection) -> str:
    """The file name of a SQLite connection's main database ('' for an in-memory one)."""
    return str(conn.engine.url.database or "")


def _not_a_database(path: str) -> UnusableDatabase:
    return UnusableDatabase(
        f"{path} is not a SQLite database (its first bytes are not SQLite's header): "
        "check that the database URL (--db, -x db or COWRIE_DB_URL) names the database "
        "file; nothing was written"
    )


def _damaged(path: str, problem: str, found_by: str = "PRAGMA quick_check") -> UnusableDatabase:
    first = problem.strip().splitlines()[0] if problem.strip() else "no detail"
    return UnusableDatabase(
        f"SQLite database {path} is damaged ({found_by}: {first}); nothing was "
        f"written: restore it from a backup, or salvage it with `sqlite3 {path} .recover`"
    )


def require_not_a_folder(path: str) -> None:
    """Raise :class:`UnusableDatabase` when ``path`` is a folder (SQLite would only say
    "unable to open database file").

    Only ``stat``, never ``open``: closing any file descriptor of a database file drops
    every POSIX lock this process holds on it (SQLite's "How To Corrupt", 2.2), and then
    another process's last connection deletes the WAL of a job still writing. A file that
    is not a database is named by SQLite's own SQLITE_NOTADB instead (:func:`as_unusable`).
    """
    in_memory_or_uri = not path or path == ":memory:" or path.startswith("file:")
    if not in_memory_or_uri and os.path.isdir(os.path.expanduser(path)):
        raise UnusableDatabase(
            f"{path} is a folder, not a SQLite database file: check the database URL "
            "(--db, -x db or COWRIE_DB_URL)"
        )


def as_unusable(path: str, exc: BaseException) -> UnusableDatabase | None:
    """The :class:`UnusableDatabase` that SQLite's error ``exc`` (or the DBAPI error
    SQLAlchemy wraps) means, or None when it means something else (a lock, a full disk):
    SQLITE_NOTADB is a file that is not a database, SQLITE_CORRUPT a damaged one."""
    orig = getattr(exc, "orig", None) or exc
    name = getattr(orig, "sqlite_errorname", "")
    if name == "SQLITE_NOTADB":
        return _not_a_database(path)
    if name == "SQLITE_CORRUPT" or name.startswith("SQLITE_CORRUPT_"):
        return _damaged(path, str(orig), "SQLite")
    return None


def quick_check(conn: sa.Connection) -> str:
    """``PRAGMA quick_check``'s first line ('ok' for a sound file); raises
    :class:`UnusableDatabase` when SQLite cannot read the file at all. The transaction
    this opens is rolled back, so the connection is left as it was found."""
    path = sqlite_file(conn)
    began = not conn.in_transaction()
    try:
        rows = conn.exec_driver_sql(f"PRAGMA quick_check({QUICK_CHECK_MAX_ERRORS})").all()
    except DatabaseError as exc:
        if began:
            conn.rollback()
        unusable = as_unusable(path, exc)
        if unusable is None:
            raise
        raise unusable from exc
    if began:
        conn.rollback()
    # One row per problem, and a row may hold several lines (the heading and the first).
    lines = [line for row in rows for line in str(row[0]).splitlines() if line.strip()]
    named = [line for line in lines if not line.startswith("***")]
    return (named or lines or ["no result"])[0]


def require_usable_sqlite(conn: sa.Connection) -> None:
    """Raise :class:`UnusableDatabase` unless ``conn``'s SQLite file is a sound
    database; an empty or new file is fine (``upgrade`` creates the schema in it).
    A no-op on other dialects."""
    if conn.dialect.name != "sqlite":
        return
    path = sqlite_file(conn)
    require_not_a_folder(path)
    result = quick_check(conn)
    if result != QUICK_CHECK_OK:
        raise _damaged(path, result)
