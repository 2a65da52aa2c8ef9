"""One backfill or clear at a time on a PostgreSQL database: a session advisory lock.

The walker's claim (:class:`~.control.AdvisoryClaim`) takes it on each connection it
opens and releases it when it closes the connection (a session lock outlives a
transaction, and pooled sessions live on; a dead session holds none). A second job is
refused, told the first one's pid and host (:mod:`.control` words the refusal). SQLite
has no such lock: its claim is the job's row in the progress table
(:class:`~.control.RowClaim`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy import Connection

ADVISORY_LOCK_KEY = 0x636F_7772_6965  # "cowrie"
ADVISORY_LOCK_WAIT_S = 5.0  # a backend that just lost its client may hold it a moment

_TRY = sa.text("SELECT pg_try_advisory_lock(:key)")
_UNLOCK = sa.text("SELECT pg_advisory_unlock(:key)")
_HOLDER = sa.text(
    "SELECT a.pid, a.application_name FROM pg_locks l "
    "JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted "
    "AND l.objid = (:key & 4294967295) "
    # an advisory lock is the database's own: a job on another database of the server
    # holds the same key there
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


def try_take(
    conn: Connection, sleep: Callable[[float], None] = time.sleep, *, grace: bool = True
) -> bool:
    """Take the lock on ``conn``'s session; False when another session holds it.

    A backend that was just terminated (our own, after a lost connection) can hold the
    lock for a moment while it exits: with ``grace`` it is allowed a few seconds.
    """
    deadline = time.monotonic() + (ADVISORY_LOCK_WAIT_S if grace else 0.0)
    while True:
        got = bool(conn.execute(_TRY, {"key": ADVISORY_LOCK_KEY}).scalar())
        conn.commit()
        if got or time.monotonic() >= deadline:
            return got
        sleep(0.2)


def wait_while_held(conn: Connection, sleep: Callable[[float], None] = time.sleep) -> None:
    """Give a holder up to :data:`ADVISORY_LOCK_WAIT_S` to let go, as :func:`take` does: a
    backend whose client was just killed holds the lock until its statement returns."""
    deadline = time.monotonic() + ADVISORY_LOCK_WAIT_S
    while holder_pid(conn) is not None and time.monotonic() < deadline:
        conn.commit()
        sleep(0.2)
    conn.commit()


def describe_holder(conn: Connection) -> str:
    """The session holding the lock, as the server shows it (its backend pid and
    application name), for a refusal that found no job row naming it."""
    holder = conn.execute(_HOLDER, {"key": ADVISORY_LOCK_KEY}).first()
    conn.commit()
    if holder is None:
        return "its session just ended: rerun"
    return f"backend pid {holder[0]}, application {holder[1]!r}"


def release(conn: Connection) -> None:
    conn.execute(_UNLOCK, {"key": ADVISORY_LOCK_KEY})
    conn.commit()


def holder_pid(conn: Connection) -> int | None:
    """The backend pid holding the lock now (None: no job runs)."""
    holder = conn.execute(_HOLDER, {"key": ADVISORY_LOCK_KEY}).first()
    return int(holder[0]) if holder else None


def backend_pid(conn: Connection) -> int:
    """This session's backend pid (what :func:`holder_pid` shows while it runs)."""
    pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
    conn.commit()
    return int(pid)
