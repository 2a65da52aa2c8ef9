"""What can go wrong in a backfill, and which failures are worth a retry.

One root, :class:`BackfillError` (under the project's
:class:`~cowrieprocessor.errors.CowrieError`); callers catch it. Transient failures are
named by kind (:class:`Transient`), decided from the driver's error class and SQLSTATE,
never from message text except SQLite's, which has no codes for them. A kind decides
what the walker does: retry with backoff, replace the connection, or split the range.
"""

from __future__ import annotations

import enum

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from cowrieprocessor.errors import CowrieError
from cowrieprocessor.settings import mask_secrets


class Transient(enum.StrEnum):
    """A failure that a retry may cure; the value is what a log line calls it."""

    LOCK_TIMEOUT = "lock timeout"
    DEADLOCK = "deadlock"
    SERIALIZATION = "serialization failure"
    STATEMENT_TIMEOUT = "statement timeout"
    CONNECTION_LOST = "connection lost"
    DATABASE_LOCKED = "database is locked"  # SQLite

    @property
    def splits_the_range(self) -> bool:
        """A range that ran out of time is split in two rather than retried whole."""
        return self is Transient.STATEMENT_TIMEOUT

    @property
    def needs_a_new_connection(self) -> bool:
        return self is Transient.CONNECTION_LOST


# PostgreSQL SQLSTATEs worth a retry (class 08, connection exceptions, too).
PG_TRANSIENT = {
    "55P03": Transient.LOCK_TIMEOUT,
    "40P01": Transient.DEADLOCK,
    "40001": Transient.SERIALIZATION,
    "57014": Transient.STATEMENT_TIMEOUT,
    "57P01": Transient.CONNECTION_LOST,
    "57P02": Transient.CONNECTION_LOST,
    "57P03": Transient.CONNECTION_LOST,
}


class BackfillError(CowrieError):
    """The backfill cannot run or cannot finish; the message says why."""


class BatchFailed(BackfillError):
    """A range failed for good. Everything committed before it stays."""

    def __init__(self, message: str, kind: Transient | None = None) -> None:
        super().__init__(message)
        self.kind = kind


class BackfillInterrupted(BackfillError):
    """Stopped on request between two batches; a rerun resumes."""


def classify(exc: BaseException, dialect: str) -> Transient | None:
    """Name a transient failure, or None when retrying cannot help."""
    if not isinstance(exc, DBAPIError):
        return None
    if exc.connection_invalidated:
        return Transient.CONNECTION_LOST
    if dialect == "postgresql":
        code = getattr(exc.orig, "pgcode", None)
        if code in PG_TRANSIENT:
            return PG_TRANSIENT[code]
        if code is not None and code.startswith("08"):
            return Transient.CONNECTION_LOST
        if code is None and isinstance(exc, sa.exc.OperationalError):
            return Transient.CONNECTION_LOST
        return None
    message = str(exc.orig).lower()
    if "database is locked" in message or "database table is locked" in message:
        return Transient.DATABASE_LOCKED
    return None


def driver_detail(exc: DBAPIError) -> str:
    """The driver's message as a log line or an error quotes it: its first line, with
    any password masked ("" for an empty message)."""
    return mask_secrets((str(exc.orig).strip().splitlines() or [""])[0])
