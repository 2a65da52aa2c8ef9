"""The database's health, read from PostgreSQL's own views before each batch.

Two signals, each with its knob (:mod:`.knobs`; 0 turns it off):

- ``max_replica_lag``: the byte distance between ``pg_current_wal_lsn()`` and the
  ``replay_lsn`` of every standby connected now (``pg_stat_replication``), and the
  ``restart_lsn`` of every *active* replication slot (``pg_replication_slots``). A
  standby that is not connected, an inactive slot, or a server without replication
  is no reason to wait.
- ``max_wal_rate``: the WAL written while the batches run, measured from
  ``pg_current_wal_lsn()`` between two readings (it includes what other sessions
  wrote meanwhile: the server cannot tell one session's WAL from another's before
  PostgreSQL 18).

One query reads all of it, outside any transaction the backfill keeps open.
What a role needs: ``pg_current_wal_lsn()`` and ``pg_replication_slots`` are open to
every role; ``pg_stat_replication`` shows a standby's positions only to members of
``pg_read_all_stats`` (or ``pg_monitor``, or a superuser). A part the role cannot
read is left out with one warning, naming the grant that turns it on; the other
parts go on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from cowrieprocessor.backfill.errors import driver_detail
from cowrieprocessor.backfill.knobs import show_bytes

log = logging.getLogger("cowrieprocessor.backfill")

# Each part yields rows (kind, name, lag in bytes, hidden): the parts a role cannot read
# are dropped from the query, one by one, the first time the query fails on them.
_PARTS = {
    "wal": "SELECT 'wal', NULL, pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0'), false",
    "standby": (
        "SELECT 'standby', application_name, "
        "pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), state IS NULL "
        "FROM pg_stat_replication"
    ),
    "slot": (
        "SELECT 'slot', slot_name, pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), false "
        "FROM pg_replication_slots WHERE active AND restart_lsn IS NOT NULL"
    ),
}
HIDDEN_STANDBY_WARNING = (
    "max_replica_lag: this role cannot see the standbys' positions in pg_stat_replication "
    "(they need pg_read_all_stats or pg_monitor: GRANT pg_monitor TO <role>); the "
    "standbys are not watched, active replication slots still are"
)


@dataclass(frozen=True)
class Reading:
    """One look at the server: its WAL position, and the farthest replica behind it."""

    wal_lsn: int | None  # bytes since 0/0; None when pg_current_wal_lsn() is not readable
    lag: int | None  # bytes; None when no standby or active slot is visible
    lagging: str  # who is farthest behind, e.g. "standby 'replica1'" ("" when lag is None)


class HealthMonitor:
    """Reads the signals; remembers which parts this role cannot read (one warning each)."""

    def __init__(self) -> None:
        self.parts = dict(_PARTS)
        self._warned_hidden = False

    def read(self, conn: Connection) -> Reading:
        """One query; commits (no transaction stays open)."""
        while self.parts:
            query = sa.text(" UNION ALL ".join(self.parts.values()))
            try:
                rows = conn.execute(query).all()
                conn.commit()
                break
            except DBAPIError as exc:
                conn.rollback()
                if not self._drop_unreadable(conn, exc):
                    raise
        else:
            return Reading(None, None, "")
        wal_lsn = None
        lag, lagging = None, ""
        for kind, name, distance, hidden in rows:
            if kind == "wal":
                wal_lsn = int(distance)
            elif hidden:
                if not self._warned_hidden:
                    self._warned_hidden = True
                    log.warning(HIDDEN_STANDBY_WARNING)
            elif distance is not None and (lag is None or int(distance) > lag):
                lag, lagging = max(int(distance), 0), f"{kind} {name!r}"
        return Reading(wal_lsn, lag, lagging)

    def _drop_unreadable(self, conn: Connection, failure: DBAPIError) -> bool:
        """Find the parts this role cannot read, warn once for each, leave them out.
        False when every part reads on its own (the failure was something else)."""
        dropped = False
        for name, part in list(self.parts.items()):
            try:
                conn.execute(sa.text(part)).all()
                conn.commit()
            except DBAPIError as exc:
                conn.rollback()
                if getattr(exc.orig, "pgcode", None) != "42501":  # insufficient_privilege
                    continue
                del self.parts[name]
                dropped = True
                log.warning(
                    "health signal %r is off: this role cannot read it (%s)",
                    name,
                    driver_detail(exc),
                )
        return dropped


def describe_lag(reading: Reading) -> str:
    return f"{show_bytes(reading.lag or 0)} ({reading.lagging})"
