"""A throwaway streaming standby of an :class:`EphemeralPostgres` primary, for tests.

What it is for: tests of code that throttles itself on replica lag. They need a real
physical standby whose lag can be made to grow on demand (``pause_replay()`` keeps the
standby receiving WAL but stops applying it) and then shrink (``resume_replay()``), and
the primary-side figure the throttle reads (:func:`replica_lag_bytes`).

How it is built: ``pg_basebackup -R -X stream --checkpoint=fast`` copies the started
primary into a temporary directory of our own (``-R`` writes ``standby.signal`` and a
``primary_conninfo`` that carries ``application_name=cowrie-test-standby``), then
``pg_ctl start`` runs it on a free port on 127.0.0.1 with ``hot_standby=on``, fsync off
and ``wal_receiver_status_interval=1`` (the primary then sees a resumed replay within a
second, not ten). The same binaries (``pg_basebackup`` is looked up next to the real
``initdb`` when ``find_bindir()`` gives a folder of a few symlinks) and, when we are root,
the same unprivileged user as the primary are used. ``start()`` returns once the
primary's ``pg_stat_replication`` shows the standby ``streaming``; any failure raises
:class:`PostgresUnavailable` with the tail of the standby's server log. ``stop()`` stops
the standby and removes its directory; the primary is left alone.

What the primary needs: nothing beyond ``initdb``'s defaults, which is what
:class:`EphemeralPostgres` gives: ``wal_level=replica``, ``max_wal_senders=10`` and, in
``pg_hba.conf``, ``local replication all trust`` and ``host replication all
127.0.0.1/32 trust`` (from ``--auth=trust``). A primary configured otherwise needs
``wal_level`` of ``replica`` or ``logical``, ``max_wal_senders`` of at least 2
(``pg_basebackup -X stream`` holds two at once, the standby then one) and a
``replication`` line for 127.0.0.1. The settings a hot standby must not set lower
than its primary (``max_connections`` and friends) are copied from the primary.

Nothing here is production code; it lives in the package next to ``ephemeral_pg`` so
that tests and benchmarks build their standbys the same way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from cowrieprocessor.testing.ephemeral_pg import (
    Cluster,
    EphemeralPostgres,
    PostgresUnavailable,
    _server_user,
    find_bindir,
    make_basedir,
    start_server,
)

APPLICATION_NAME = "cowrie-test-standby"

# A hot standby refuses to start when one of these is lower than on its primary.
_MUST_MATCH_PRIMARY = (
    "max_connections",
    "max_worker_processes",
    "max_wal_senders",
    "max_prepared_transactions",
    "max_locks_per_transaction",
)


def _full_bindir(bindir: Path) -> Path:
    """The folder holding ``pg_basebackup`` next to the primary's ``initdb``.

    ``find_bindir()`` may return a folder of symlinks to a few programs only (here
    ``/usr/local/bin`` links initdb, pg_ctl and postgres, not pg_basebackup); the folder
    the ``initdb`` link points to has them all, from the same build.
    """
    for candidate in (bindir, (bindir / "initdb").resolve().parent):
        if (candidate / "pg_basebackup").exists() and (candidate / "pg_ctl").exists():
            return candidate
    raise PostgresUnavailable(f"no pg_basebackup next to {bindir / 'initdb'}")


def _conninfo_value(value: str) -> str:
    """``value`` quoted for a libpq ``key=value`` connection string."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _scalar(url: str, sql: str, params: dict[str, Any] | None = None) -> Any:
    """Run one statement in autocommit mode on a fresh connection; its first column."""
    engine = sa.create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(sql), params or {}).scalar()
    finally:
        engine.dispose()


def replica_lag_bytes(primary_url: str, *, application_name: str | None = None) -> int | None:
    """On the primary: bytes of WAL written but not yet replayed by the slowest standby.

    ``max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn))`` over ``pg_stat_replication``
    (only the standbys called ``application_name`` when given). None when no standby is
    connected, or none has reported a replay position yet.
    """
    value = _scalar(
        primary_url,
        "SELECT max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)) "
        "FROM pg_stat_replication "
        "WHERE CAST(:name AS text) IS NULL OR application_name = :name",
        {"name": application_name},
    )
    return None if value is None else int(value)


@dataclass
class StreamingStandby(Cluster):
    """A hot standby streaming from ``primary``, which must already be started."""

    primary: EphemeralPostgres
    application_name: str = APPLICATION_NAME
    start_timeout: float = 30.0
    extra_settings: dict[str, str] = field(default_factory=dict)

    def _fail(self, message: str) -> PostgresUnavailable:
        """Stop what was started and build the exception to raise, with the log tail."""
        tail = self._log_tail()
        self.stop()
        return PostgresUnavailable(f"{message}\n{tail}" if tail else message)

    def _streaming(self) -> bool:
        state = _scalar(
            self.primary.url,
            "SELECT state FROM pg_stat_replication WHERE application_name = :name "
            "AND replay_lsn IS NOT NULL",
            {"name": self.application_name},
        )
        return bool(state == "streaming")

    def start(self) -> str:
        """Take the base backup, start the standby and wait until it streams; its URL."""
        if self.primary.basedir is None or not self.primary.port:
            raise PostgresUnavailable("the primary EphemeralPostgres is not started")
        self._bindir = _full_bindir(self.primary._bindir or find_bindir())
        self._user = _server_user()
        self.basedir = make_basedir("cowrie-standby-", self._user)
        data = self.basedir / "data"

        try:
            primary_settings = {
                name: str(_scalar(self.primary.url, f"SHOW {name}")) for name in _MUST_MATCH_PRIMARY
            }
        except sa.exc.SQLAlchemyError as exc:
            raise self._fail(f"cannot read the primary's settings: {exc}") from exc

        backup = self._run(
            str(self._bindir / "pg_basebackup"),
            "-D",
            str(data),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.primary.port),
            "-U",
            "postgres",
            # -d lets pg_basebackup -R write application_name into primary_conninfo.
            "-d",
            f"application_name={_conninfo_value(self.application_name)}",
            "-R",
            "-X",
            "stream",
            "--checkpoint=fast",  # a spread checkpoint would take minutes
            "--no-sync",
        )
        if backup.returncode != 0:
            raise self._fail(f"pg_basebackup failed: {backup.stderr.strip() or backup.stdout}")

        settings = {
            "hot_standby": "on",
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.basedir),
            "fsync": "off",
            # Report the replay position every second rather than every 10 s, so the
            # primary's pg_stat_replication (hence the lag) follows a resumed replay.
            "wal_receiver_status_interval": "1",
            **primary_settings,
            **self.extra_settings,
        }
        self.port, last_error = start_server(self._run, self._bindir, data, self.basedir, settings)
        if not self.port:
            raise self._fail(f"pg_ctl start of the standby failed: {last_error}")

        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                if self._streaming():
                    return self.url
            except sa.exc.SQLAlchemyError as exc:
                raise self._fail(f"cannot query the primary's pg_stat_replication: {exc}") from exc
            if time.monotonic() > deadline:
                raise self._fail(
                    f"the standby {self.application_name!r} was not streaming in "
                    f"pg_stat_replication after {self.start_timeout:.0f} s"
                )
            time.sleep(0.1)

    def pause_replay(self, timeout: float = 10.0) -> None:
        """Keep receiving WAL but stop applying it: the replica lag grows from here.

        Returns once the standby reports replay ``paused`` (PostgreSQL 14 and later;
        before that the pause is only requested, which stops replay at the next record).
        """
        _scalar(self.url, "SELECT pg_wal_replay_pause()")
        if int(_scalar(self.url, "SHOW server_version_num")) < 140000:
            return
        deadline = time.monotonic() + timeout
        while _scalar(self.url, "SELECT pg_get_wal_replay_pause_state()") != "paused":
            if time.monotonic() > deadline:
                raise TimeoutError(f"standby replay not paused after {timeout:.0f} s")
            time.sleep(0.05)

    def resume_replay(self) -> None:
        _scalar(self.url, "SELECT pg_wal_replay_resume()")

    def replay_lsn(self) -> str | None:
        """``pg_last_wal_replay_lsn()`` on the standby, e.g. ``'0/3000148'``."""
        value = _scalar(self.url, "SELECT pg_last_wal_replay_lsn()")
        return None if value is None else str(value)

    def lag_bytes(self) -> int | None:
        """:func:`replica_lag_bytes` on the primary, for this standby only."""
        return replica_lag_bytes(self.primary.url, application_name=self.application_name)

    def wait_caught_up(self, timeout: float = 30.0) -> None:
        """Wait until the primary sees this standby's replay lag at 0 bytes."""
        deadline = time.monotonic() + timeout
        lag = self.lag_bytes()
        while lag != 0:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"standby {self.application_name!r} still {lag} bytes behind "
                    f"after {timeout:.0f} s"
                )
            time.sleep(0.05)
            lag = self.lag_bytes()

    def __enter__(self) -> StreamingStandby:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
