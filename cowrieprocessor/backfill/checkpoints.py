"""The checkpoints a backfill's WAL forced, counted over the run and named in its summary.

Why: after each checkpoint, the next change of every page writes the whole page to the
WAL (a full-page image). A walk changes pages all over the table in every batch, so once
the WAL it writes fills ``max_wal_size``, each forced checkpoint makes its next changes
write whole pages, which fills ``max_wal_size`` sooner. Measured at 5M sessions with
``max_wal_size = 4GB`` (docs/performance.md, "Checkpoints at 5M"): a checkpoint every
7 s, 36 GB of WAL and 5.1M full-page images for 5M updates. The server says so only in
its own log ("checkpoints are occurring too frequently"), which whoever runs the deploy
does not read; the summary says it, with the setting to raise.

What is read, before the walk and after it, on the job's own connection: the number of
requested checkpoints (``pg_stat_bgwriter.checkpoints_req``; from PostgreSQL 17
``pg_stat_checkpointer.num_requested``), which every role may read, and the settings
``max_wal_size`` and ``checkpoint_warning``. A requested checkpoint is one that WAL
volume (or a ``CHECKPOINT`` command) asked for, not one that ``checkpoint_timeout``
started. The counters are the server's, so another session's WAL counts too: the summary
says "while it ran", not "because of it".

The warning follows the server's own rule: checkpoints closer together than
``checkpoint_warning`` (30 s by default; 0 turns the server's warning and ours off),
taken as the run's time over the number of requested checkpoints, when there were at
least two.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

log = logging.getLogger("cowrieprocessor.backfill")

_SETTINGS = (
    "SELECT current_setting('max_wal_size'), "
    "(SELECT setting::int FROM pg_settings WHERE name = 'checkpoint_warning'), "
)
_REQUESTED_BEFORE_17 = "(SELECT checkpoints_req FROM pg_stat_bgwriter)"
_REQUESTED_FROM_17 = "(SELECT num_requested FROM pg_stat_checkpointer)"


@dataclass(frozen=True)
class Reading:
    """The server's count of requested checkpoints, and the two settings, at one moment."""

    requested: int
    max_wal_size: str  # as the server shows it, e.g. "4GB"
    warning_s: int  # checkpoint_warning in seconds (0: off)


def read(conn: Connection) -> Reading | None:
    """The count and settings now (None on SQLite). The caller ends the transaction."""
    if conn.dialect.name != "postgresql":
        return None
    version = conn.dialect.server_version_info or (0,)
    requested = _REQUESTED_FROM_17 if version >= (17,) else _REQUESTED_BEFORE_17
    try:
        row = conn.execute(sa.text(_SETTINGS + requested)).one()
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise  # the caller's retry handles a lost connection
        log.debug("checkpoints not counted: %s", exc)
        return None
    return Reading(requested=int(row[2]), max_wal_size=str(row[0]), warning_s=int(row[1]))


@dataclass(frozen=True)
class Checkpoints:
    """What the server did between two readings ``seconds`` apart."""

    requested: int
    seconds: float
    max_wal_size: str
    warning_s: int

    @classmethod
    def between(cls, before: Reading, after: Reading, seconds: float) -> Checkpoints:
        return cls(
            requested=max(after.requested - before.requested, 0),
            seconds=seconds,
            max_wal_size=after.max_wal_size,
            warning_s=after.warning_s,
        )

    @property
    def every(self) -> float | None:
        """Seconds between two of them on average (None with fewer than two)."""
        return self.seconds / self.requested if self.requested >= 2 else None

    @property
    def too_frequent(self) -> bool:
        """Closer together than checkpoint_warning, the server's own threshold."""
        every = self.every
        return every is not None and self.warning_s > 0 and every < self.warning_s

    def describe(self) -> str:
        every = self.every
        spacing = f", one every {every:.1f} s" if every is not None else ""
        return f"{self.requested}{spacing} (max_wal_size {self.max_wal_size})"

    def warning(self) -> str:
        return (
            f"the server was asked for a checkpoint every {self.every or 0:.1f} s while the "
            f"backfill ran ({self.requested} in {self.seconds:.0f} s): its WAL filled "
            f"max_wal_size ({self.max_wal_size}) again and again, and after each checkpoint "
            "the next change of every page writes the whole page to the WAL, so the backfill "
            "wrote more WAL and went slower. Before a large backfill, raise max_wal_size "
            "(ALTER SYSTEM SET max_wal_size = ...; SELECT pg_reload_conf(); no restart; the "
            "WAL directory then needs that much room) so that checkpoints are at least "
            f"checkpoint_warning ({self.warning_s} s) apart (docs/runbook.md, Tuning)"
        )
