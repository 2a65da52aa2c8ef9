"""Online-DDL helpers shared by the revisions.

A PostgreSQL ``ALTER TABLE`` needs a lock on a table that the honeypot loader and
the analysts are using. Waiting for that lock is the real danger: while an ALTER
waits, every later query on the table queues behind it. So each DDL statement runs
under a short ``lock_timeout`` inside a savepoint; when the lock cannot be had in time
the savepoint is rolled back (which releases anything it took), we wait a moment and
try again, and after the last attempt the migration fails with a message that says so.
Offline (``--sql``) the script a DBA reviews sets the same ``lock_timeout`` before each
such statement (and resets it after), with no retry: psql stops at the error. A
``CONCURRENTLY`` build or drop is the exception, on both paths: :func:`no_lock_timeout`.

Names: every identifier in a statement is quoted by the dialect it runs on
(:class:`Statement`), whatever its source (our constants, the catalog, the partition
tree, the ledger): a name read from the database is input, and ``"; CREATE ...; --``
must stay a name. ``quote`` only quotes a name that needs it, so the offline script of
the usual case reads as it always did.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import cast

from alembic import op
from sqlalchemy import Dialect, TextClause, text
from sqlalchemy.engine.default import DefaultDialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import ExecutableDDLElement
from sqlalchemy.sql.compiler import DDLCompiler, IdentifierPreparer

from cowrieprocessor.errors import CowrieError

log = logging.getLogger("cowrieprocessor.migrations.ddl")


class DdlLockTimeout(CowrieError):
    """A DDL statement could not take its lock in time, after every attempt."""


LOCK_NOT_AVAILABLE = "55P03"
DEFAULT_DDL_LOCK_TIMEOUT_MS = 3_000
DEFAULT_DDL_ATTEMPTS = 5
# Our transactional DDL changes the catalog only (nullable columns, NOT VALID constraints,
# drops): milliseconds once it has its lock. A bound all the same, should a statement
# ever do more than that (it includes the lock wait, which lock_timeout cuts far sooner).
DDL_STATEMENT_TIMEOUT_MS = 60_000


# A name in SQL: a plain identifier, or (schema, name) for a schema-qualified one.
Name = str | tuple[str, str]


class Statement(ExecutableDDLElement):
    """One DDL statement: fixed SQL written in our code with ``{}`` where each of
    ``names`` goes, each name quoted by the dialect the statement is compiled for.

    ``Statement("ALTER TABLE {} VALIDATE CONSTRAINT {}", ("public", leaf), name)``.
    Unlike ``text()``, a name's ``:`` is not a bind parameter, and its ``%`` is escaped
    once for the driver (``psycopg2``) like the rest of the statement.
    """

    inherit_cache = False

    def __init__(self, template: str, *names: Name) -> None:
        self.parts = template.split("{}")
        if len(self.parts) != len(names) + 1:
            raise ValueError(f"{len(names)} name(s) for {len(self.parts) - 1} placeholder(s)")
        self.names = names

    def render(self, preparer: IdentifierPreparer, fixed: Callable[[str], str]) -> str:
        out = [fixed(self.parts[0])]
        for name, part in zip(self.names, self.parts[1:], strict=True):
            out += [quote_name(preparer, name), fixed(part)]
        return "".join(out)

    def sql(self, dialect: Dialect) -> str:
        """The statement as a person would type it (for a log line: no driver escaping)."""
        return self.render(_plain_preparer(dialect), lambda part: part)


@compiles(Statement)
def _compile_statement(element: Statement, compiler: DDLCompiler, **_kw: object) -> str:
    return element.render(compiler.preparer, compiler.sql_compiler.post_process_text)


def quote_name(preparer: IdentifierPreparer, name: Name) -> str:
    """``name`` (or ``(schema, name)``) as an identifier, quoted when it needs it."""
    if isinstance(name, tuple):
        schema, plain = name
        return f"{preparer.quote_schema(schema)}.{preparer.quote(plain)}"
    return preparer.quote(name)


def show_name(dialect: Dialect, name: Name) -> str:
    """``name`` as a person would type it in SQL on ``dialect`` (for a log line)."""
    return quote_name(_plain_preparer(dialect), name)


def _plain_preparer(dialect: Dialect) -> IdentifierPreparer:
    """``dialect``'s quoting without the driver's escaping (``%`` stays one ``%``)."""
    plain = cast(type[DefaultDialect], type(dialect))(paramstyle="named")
    return plain.identifier_preparer


def _as_clause(statement: str | Statement) -> Statement | TextClause:
    return text(statement) if isinstance(statement, str) else statement


def run_pg_ddl(
    statement: str | Statement,
    *,
    lock_timeout_ms: int = DEFAULT_DDL_LOCK_TIMEOUT_MS,
    attempts: int = DEFAULT_DDL_ATTEMPTS,
) -> None:
    """Run one PostgreSQL DDL statement under ``lock_timeout``, retrying lock timeouts.

    ``statement`` is fixed SQL written in a revision (a ``str``: no name from outside
    our code), or a :class:`Statement` with its names. In offline mode (``--sql``) the
    ``SET LOCAL`` and the statement are printed.
    """
    clause = _as_clause(statement)
    set_local_timeouts(lock_timeout_ms)
    if op.get_context().as_sql:
        op.execute(clause)
        return
    bind = op.get_bind()

    def attempt() -> None:
        with bind.begin_nested():
            bind.execute(clause)

    _retry_lock_timeouts(attempt, lock_timeout_ms, attempts)


def set_local_timeouts(lock_timeout_ms: int = DEFAULT_DDL_LOCK_TIMEOUT_MS) -> None:
    """``SET LOCAL`` the DDL ``lock_timeout`` and ``statement_timeout`` for the rest of the
    revision's transaction (printed too, offline). ``SET`` takes no bind parameter: the
    values are integers, rendered as such."""
    op.execute(text(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}"))
    op.execute(text(f"SET LOCAL statement_timeout = {int(DDL_STATEMENT_TIMEOUT_MS)}"))


def run_pg_ddl_autocommit(
    statement: str | Statement,
    *,
    lock_timeout_ms: int = DEFAULT_DDL_LOCK_TIMEOUT_MS,
    attempts: int = DEFAULT_DDL_ATTEMPTS,
) -> None:
    """:func:`run_pg_ddl` for a statement that runs outside a transaction block, inside
    ``autocommit_block()`` (no savepoint there: a failed attempt has already ended).
    Offline, the ``SET lock_timeout``, the statement and the ``RESET`` are printed."""
    set_timeout = text(f"SET lock_timeout = {int(lock_timeout_ms)}")
    clause = _as_clause(statement)
    if op.get_context().as_sql:
        op.execute(set_timeout)
        op.execute(clause)
        op.execute(text("RESET lock_timeout"))
        return
    bind = op.get_bind()
    bind.execute(set_timeout)
    try:
        _retry_lock_timeouts(lambda: bind.execute(clause), lock_timeout_ms, attempts)
    finally:
        bind.execute(text("RESET lock_timeout"))


# foreign_key_violation, check_violation: what VALIDATE CONSTRAINT raises on a bad row
CONSTRAINT_VIOLATED = {"23503", "23514"}


def validate_constraint(statement: Statement) -> bool:
    """Run ``ALTER TABLE ... VALIDATE CONSTRAINT`` (``statement``) as
    :func:`run_pg_ddl_autocommit` does: True when it is validated, False when existing
    rows violate it. Then it stays NOT VALID and nothing else has changed (the statement
    ran alone, outside a transaction): the caller counts and names the rows. One scan
    when the data is clean, which it almost always is, instead of a count and then the
    validation's own scan. Offline, the statement is printed and True returned."""
    try:
        run_pg_ddl_autocommit(statement)
    except DBAPIError as exc:
        if getattr(exc.orig, "pgcode", None) in CONSTRAINT_VIOLATED:
            return False
        raise
    return True


@contextmanager
def no_lock_timeout() -> Iterator[None]:
    """Around ``CREATE``/``DROP INDEX CONCURRENTLY``: ``lock_timeout = 0``, said explicitly
    (online and offline), then ``RESET``.

    Such a build waits for its lock (SHARE UPDATE EXCLUSIVE, which does not queue the
    loader's reads and writes), then for every transaction older than it to end, and
    ``lock_timeout`` cuts that wait too: measured on PostgreSQL 15, a build with
    ``lock_timeout = 1000`` behind a read-only transaction on *another* table fails after
    1 s ("canceling statement due to lock timeout") and leaves an INVALID index. So a
    build never runs under a short ``lock_timeout``, nor under a role's or the server's
    default one, as ``statement_timeout = 0`` keeps a server-wide limit from cutting it.
    """
    op.execute(text("SET lock_timeout = 0"))
    yield
    op.execute(text("RESET lock_timeout"))


def _retry_lock_timeouts(
    attempt: Callable[[], object], lock_timeout_ms: int, attempts: int
) -> None:
    for n in range(1, attempts + 1):
        try:
            attempt()
            return
        except DBAPIError as exc:
            code = getattr(exc.orig, "pgcode", None)
            if code != LOCK_NOT_AVAILABLE or n == attempts:
                if code == LOCK_NOT_AVAILABLE:
                    raise DdlLockTimeout(
                        f"could not take the lock for DDL within {lock_timeout_ms} ms after "
                        f"{attempts} attempts; a long transaction is holding it "
                        "(see pg_stat_activity) - rerun `alembic upgrade head` when it ends"
                    ) from exc
                raise
            delay = min(0.5 * 2 ** (n - 1), 8.0)
            log.warning(
                "lock_timeout (%d ms) on DDL, attempt %d/%d; retrying in %.1f s",
                lock_timeout_ms,
                n,
                attempts,
                delay,
            )
            time.sleep(delay)
