"""One transaction's worth of work at a time: the job's connection, its claim, retries.

The walker, the governor's heartbeat and the jobs' reads all go through
:class:`Transactions`: it keeps one connection open (reconnecting when it was lost),
attaches the job's claim to each new connection (:class:`~.control.Claim`: PostgreSQL's
advisory lock is per session), begins a batch's transaction (``BEGIN IMMEDIATE`` on
SQLite, so the write lock is taken up front), and runs a unit of work again after a
transient failure (:mod:`.errors`), with exponential backoff, until ``max_retries``.
A failure that persists, or that is not transient, is raised as
:class:`~.errors.BatchFailed`, naming what failed and why.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from cowrieprocessor.backfill import control
from cowrieprocessor.backfill.errors import BatchFailed, classify, driver_detail
from cowrieprocessor.backfill.run import Run

log = logging.getLogger("cowrieprocessor.backfill")
RETRY_FIRST_S = 0.2  # the first retry's delay; each next one doubles it ...
RETRY_MAX_S = 10.0  # ... up to this; each delay is jittered down to half


class Transactions:
    """The connection of one run (``run``: its job, knobs, retry count), with its claim."""

    def __init__(
        self,
        engine: Engine,
        run: Run,
        *,
        sleep: Callable[[float], None] = time.sleep,
        claim: control.Claim | None = None,
    ) -> None:
        self.engine = engine
        self.run = run
        self.sleep = sleep
        self.dialect = engine.dialect.name
        self.conn: Connection | None = None
        # one job at a time: taken when the run starts (:meth:`take_claim`); a worker's
        # is its job's (:class:`~.control.WorkerClaim`)
        self.claim = claim or control.claim_for(
            self.dialect, run.job, dry_run=run.dry_run, sleep=sleep
        )
        self.claimed = False

    def connection(self) -> Connection:
        if self.conn is None or self.conn.closed or self.conn.invalidated:
            if self.conn is not None:
                self._drop_connection()
            conn = self.engine.connect()
            try:
                self.claim.attach(conn)  # PostgreSQL: the advisory lock, per session
            except BaseException:
                conn.close()
                raise
            self.conn = conn
            self.run.backend = self.claim.backend
        return self.conn

    def usable(self) -> Connection | None:
        """The open connection, if it can still be used (None: closed, lost or none)."""
        conn = self.conn
        return conn if conn is not None and not conn.closed and not conn.invalidated else None

    def take_claim(self, conn: Connection) -> None:
        """The run starts: first thing in the transaction that writes its row (raises
        :class:`~.control.JobRunning` while another job runs, before any write)."""
        self.claim.take(conn)
        self.claimed = True

    def _drop_connection(self) -> None:
        if self.conn is not None:
            try:
                self.claim.detach(self.conn)
            finally:
                self.conn.close()
                self.conn = None

    def close(self) -> None:
        """Close the connection and release the claim."""
        try:
            self._drop_connection()
        finally:
            self.claim.release()

    def begin(self, conn: Connection) -> Any:
        """A batch transaction. SQLite takes the write lock up front (BEGIN IMMEDIATE)."""
        if self.dialect == "sqlite" and not self.run.dry_run:
            conn = conn.execution_options(sqlite_begin="IMMEDIATE")
        return conn.begin()

    def retrying(
        self, what: str, fn: Callable[[Connection], Any], *, split_on_timeout: bool = False
    ) -> Any:
        """Run ``fn`` (one transaction's worth of work), retrying transient failures.

        With ``split_on_timeout``, a statement timeout is raised at once (as BatchFailed
        with that kind) so that the caller can split the range instead.
        """
        attempt = 0
        while True:
            conn = self.connection()
            try:
                return fn(conn)
            except DBAPIError as exc:
                if conn.in_transaction():
                    conn.rollback()
                kind = classify(exc, self.dialect)
                split = split_on_timeout and kind is not None and kind.splits_the_range
                max_retries = self.run.knobs.max_retries
                if kind is None or split or attempt >= max_retries:
                    cause = kind or type(exc.orig).__name__
                    detail = driver_detail(exc)
                    raise BatchFailed(
                        f"{what} failed after {attempt + 1} attempt(s): {cause}: {detail}",
                        kind,
                    ) from exc
                attempt += 1
                self.run.retried()
                delay = min(RETRY_FIRST_S * 2 ** (attempt - 1), RETRY_MAX_S)
                delay *= 0.5 + random.random() / 2
                log.warning(
                    "%s: %s, retry %d/%d in %.1f s", what, kind, attempt, max_retries, delay
                )
                if kind.needs_a_new_connection:
                    self._drop_connection()
                self.sleep(delay)
