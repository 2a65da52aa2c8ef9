"""Online-DDL helpers shared by the revisions.

A PostgreSQL ``ALTER TABLE`` needs a lock on a table that the honeypot loader and
the analysts are using. Waiting for that lock is the real danger: while an ALTER
waits, every later query on the table queues behind it. So each DDL statement runs
under a short ``lock_timeout`` inside a savepoint; when the lock cannot be had in time
the savepoint is rolled back (which releases anything it took), we wait a moment and
try again, and after the last attempt the migration fails with a message that says so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from alembic import op
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from cowrieprocessor.errors import CowrieError

log = logging.getLogger("cowrieprocessor.migrations.ddl")


class DdlLockTimeout(CowrieError):
    """A DDL statement could not take its lock in time, after every attempt."""


LOCK_NOT_AVAILABLE = "55P03"
DEFAULT_DDL_LOCK_TIMEOUT_MS = 3_000
DEFAULT_DDL_ATTEMPTS = 5


def run_pg_ddl(
    statement: str,
    *,
    lock_timeout_ms: int = DEFAULT_DDL_LOCK_TIMEOUT_MS,
    attempts: int = DEFAULT_DDL_ATTEMPTS,
) -> None:
    """Run one PostgreSQL DDL statement under ``lock_timeout``, retrying lock timeouts.

    ``statement`` is fixed SQL written in a revision (identifiers only, no values).
    In offline mode (``--sql``) the ``SET LOCAL`` and the statement are printed.
    """
    context = op.get_context()
    set_timeout = text(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}")
    if context.as_sql:
        op.execute(set_timeout)
        op.execute(text(statement))
        return
    bind = op.get_bind()
    bind.execute(set_timeout)

    def attempt() -> None:
        with bind.begin_nested():
            bind.execute(text(statement))

    _retry_lock_timeouts(attempt, lock_timeout_ms, attempts)


def run_pg_ddl_autocommit(
    statement: str,
    *,
    lock_timeout_ms: int = DEFAULT_DDL_LOCK_TIMEOUT_MS,
    attempts: int = DEFAULT_DDL_ATTEMPTS,
) -> None:
    """:func:`run_pg_ddl` for a statement that runs outside a transaction block, inside
    ``autocommit_block()`` (no savepoint there: a failed attempt has already ended)."""
    if op.get_context().as_sql:
        op.execute(text(statement))
        return
    bind = op.get_bind()
    bind.execute(text(f"SET lock_timeout = {int(lock_timeout_ms)}"))
    try:
        _retry_lock_timeouts(lambda: bind.execute(text(statement)), lock_timeout_ms, attempts)
    finally:
        bind.execute(text("RESET lock_timeout"))


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
