"""The database side: what the target looks like, and the one way rows go into it.

:func:`check_schema` and :func:`target_tables` read the catalog once at the start (the
revision must be ``0002_snapshot_columns`` or later; GENERATED columns are left out of
the rows). :class:`Sink` writes: ``COPY ... FROM STDIN`` on a thread of its own on
PostgreSQL (one transaction for the whole run), ``executemany`` in one transaction per
chunk on SQLite; it also answers "which of these keys exist already".
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from cowrieprocessor.db.models import SNAPSHOT_COLUMNS
from cowrieprocessor.demo.rows import JSON, TABLES, Row, Table
from cowrieprocessor.demo.spec import DemoDataError

# Which of the given keys exist already: one parameter (an array on PostgreSQL, a JSON
# array on SQLite) however many keys there are.
_EXISTING_SQL = {
    ("postgresql", "session"): (
        "SELECT session_id FROM session_summaries WHERE session_id = ANY(:keys)"
    ),
    ("sqlite", "session"): (
        "SELECT session_id FROM session_summaries "
        "WHERE session_id IN (SELECT value FROM json_each(:keys))"
    ),
    ("postgresql", "ip"): "SELECT ip_address FROM ip_inventory WHERE ip_address = ANY(:keys)",
    ("sqlite", "ip"): (
        "SELECT ip_address FROM ip_inventory "
        "WHERE ip_address IN (SELECT value FROM json_each(:keys))"
    ),
    ("postgresql", "asn"): "SELECT asn_number FROM asn_inventory WHERE asn_number = ANY(:keys)",
    ("sqlite", "asn"): (
        "SELECT asn_number FROM asn_inventory "
        "WHERE asn_number IN (SELECT value FROM json_each(:keys))"
    ),
}
# What is there already: refused without force, and the salt of every stream with it.
COUNT_SQL = (
    "SELECT (SELECT count(*) FROM session_summaries), (SELECT count(*) FROM ip_inventory), "
    "(SELECT count(*) FROM asn_inventory)"
)
_REQUIRED_TABLES = tuple(t.name for t in TABLES)


_NUL = "\x00"  # stands for NULL while a COPY buffer is built; never part of a value


def copy_text(rows: Sequence[Row], columns: int) -> bytes:
    """Rows in COPY's text format: tab-separated, ``\\N`` for NULL, backslashes doubled.

    The values never hold a tab, a newline or a NUL (JSON escapes control characters,
    and every other value is ours), which the counts below check: a bug surfaces as an
    error here, not as shifted columns in the database.
    """
    lines = ["\t".join([_NUL if v is None else str(v) for v in row]) for row in rows]
    data = "\n".join(lines) + "\n"
    if data.count("\t") != (columns - 1) * len(rows) or data.count("\n") != len(rows):
        raise DemoDataError("internal error: a generated value holds a tab or a newline")
    if "\\" in data:
        data = data.replace("\\", "\\\\")
    return data.replace(_NUL, "\\N").encode()


class _ReadOnce:
    """A file whose first read() returns the whole buffer (no copy), the next ones b""."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def read(self, _size: int = -1) -> bytes:
        data, self._data = self._data, b""
        return data


class _CopyThread:
    """Runs the COPYs on a thread of its own while the next chunk is generated.

    psycopg2 releases the GIL while libpq sends the data and while the server works
    through it, so generating (Python) and loading (the server) overlap on two cores.
    At most two chunks wait in the queue, so memory stays flat. The first error stops
    the loading and is raised in the generating thread.
    """

    def __init__(self, driver: Any) -> None:
        self._driver = driver
        self._queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._discard = False
        self._thread = threading.Thread(target=self._run, name="demo-data-copy", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self._error is None and not self._discard:
                    sql, data = item
                    cursor = self._driver.cursor()
                    try:  # one read() takes the whole buffer: the GIL is needed once
                        cursor.copy_expert(sql, _ReadOnce(data), size=len(data) + 1)
                    finally:
                        cursor.close()
            except BaseException as exc:  # handed over to the generating thread
                self._error = exc
            finally:
                self._queue.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, sql: str, data: bytes) -> None:
        self._raise()
        self._queue.put((sql, data))

    def flush(self) -> None:
        """Wait until every queued COPY is done (and raise its error, if any)."""
        self._queue.join()
        self._raise()

    def close(self, *, discard: bool = False) -> None:
        """Stop the thread; with ``discard`` (the load failed) skip what is still queued."""
        self._discard = discard
        self._queue.put(None)
        self._thread.join()


# Every column of the four tables, and whether the database computes it (GENERATED).
_COLUMNS_SQL = {
    "postgresql": (
        "SELECT t.name, a.attname, a.attgenerated <> '' "
        "FROM unnest(CAST(:tables AS text[])) AS t(name) "
        "JOIN pg_attribute a ON a.attrelid = to_regclass(t.name) "
        "WHERE a.attnum > 0 AND NOT a.attisdropped"
    ),
    "sqlite": (
        "SELECT t.value, x.name, x.hidden IN (2, 3) "
        "FROM json_each(:tables) AS t, pragma_table_xinfo(t.value) AS x"
    ),
}


def target_tables(conn: Connection, dialect: str) -> dict[str, Table]:
    """Each table as the target database has it: the columns it generates itself are
    left out (upstream's schema makes ``ip_inventory.is_scanner`` / ``is_bogon``
    GENERATED, ours does not); a column it lacks altogether is an error."""
    names = [t.name for t in TABLES]
    param: object = names if dialect == "postgresql" else JSON.encode(names)
    found: dict[str, dict[str, bool]] = {name: {} for name in names}
    for table, column, generated in conn.execute(sa.text(_COLUMNS_SQL[dialect]), {"tables": param}):
        found[table][column] = bool(generated)
    adapted: dict[str, Table] = {}
    for table in TABLES:
        lacking = [c for c in table.columns if c not in found[table.name]]
        if lacking:
            raise DemoDataError(
                f"{table.name} has no {', '.join(lacking)} column(s): demo data needs the "
                "schema of Alembic revision 0002_snapshot_columns or later"
            )
        adapted[table.name] = table.without({c for c, g in found[table.name].items() if g})
    return adapted


class Sink:
    """Writes rows through the driver: COPY on PostgreSQL, executemany on SQLite."""

    def __init__(self, conn: Connection, dialect: str, tables: dict[str, Table]) -> None:
        self.conn = conn
        self.dialect = dialect
        self.pg = dialect == "postgresql"
        self.tables = tables
        driver = conn.connection.driver_connection
        if driver is None:
            raise DemoDataError("the connection has no DBAPI connection to write through")
        self.driver: Any = driver
        self.copier: _CopyThread | None = None
        if self.pg:
            cursor = self.driver.cursor()
            try:
                copies = hasattr(cursor, "copy_expert")
            finally:
                cursor.close()
            if not copies:
                raise DemoDataError(
                    "demo data is loaded into PostgreSQL with COPY through psycopg2: "
                    "use a postgresql+psycopg2:// URL"
                )

    @contextmanager
    def run(self) -> Iterator[None]:
        """The whole load.

        PostgreSQL: one transaction, the COPYs on their own thread. SQLite: the WAL is
        checkpointed once, at the end; otherwise SQLite would checkpoint every ~4 MB,
        copying the same (randomly keyed) index pages to the database file again and
        again. The WAL grows to about the size of the new data meanwhile.
        """
        if self.pg:
            with self.conn.begin():
                copier = self.copier = _CopyThread(self.driver)
                try:
                    yield
                    copier.flush()
                except BaseException:
                    copier.close(discard=True)
                    raise
                finally:
                    self.copier = None
                copier.close()
            return
        previous = int(self.driver.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
        self.driver.execute("PRAGMA wal_autocheckpoint = 0")
        try:
            yield
        finally:
            self.driver.execute(f"PRAGMA wal_autocheckpoint = {previous}")
            self.driver.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def chunk(self) -> AbstractContextManager[object]:
        """The transaction of one chunk: SQLite commits each chunk, PostgreSQL the run."""
        if self.pg:
            return nullcontext()
        return self.conn.begin()

    def write(self, table: Table, rows: Sequence[Row]) -> None:
        if not rows:
            return
        table = self.tables[table.name]
        if table.keep is not None:
            keep = table.keep
            rows = [tuple(row[i] for i in keep) for row in rows]
        if self.copier is not None:
            self.copier.put(table.copy_sql, copy_text(rows, len(table.columns)))
            return
        cursor = self.driver.cursor()
        try:
            cursor.executemany(table.insert_sql, rows)
        finally:
            cursor.close()

    def existing(self, kind: str, keys: Sequence[object]) -> set[Any]:
        if not keys:
            return set()
        if self.copier is not None:
            self.copier.flush()  # the connection serves one statement at a time
        param: object = list(keys) if self.pg else JSON.encode(list(keys))
        sql = _EXISTING_SQL[(self.dialect, kind)]
        return {row[0] for row in self.conn.execute(sa.text(sql), {"keys": param})}


def check_schema(engine: Engine) -> None:
    inspector = sa.inspect(engine)
    tables = set(inspector.get_table_names())
    missing = [t for t in _REQUIRED_TABLES if t not in tables]
    hint = "run `alembic upgrade head` (at least `alembic upgrade 0002_snapshot_columns`) first"
    if missing:
        raise DemoDataError(
            "the database is not at Alembic revision 0002_snapshot_columns or later: "
            f"table(s) {', '.join(missing)} missing; {hint}"
        )
    columns = {c["name"] for c in inspector.get_columns("session_summaries")}
    lacking = [c for c in SNAPSHOT_COLUMNS if c not in columns]
    if lacking:
        raise DemoDataError(
            "the database is not at Alembic revision 0002_snapshot_columns or later: "
            f"session_summaries has no {', '.join(lacking)} column(s); {hint}"
        )
