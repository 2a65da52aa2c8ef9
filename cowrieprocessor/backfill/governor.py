"""What may hold the next batch back, and for how long: the operator, the server's health.

Before each batch the walker asks its :class:`Governor` for a :class:`Decision`: go
(after ``pause_ms``), wait so many seconds and ask again (why is in the decision), or
stop. It holds the batch back while

1. the operator paused the job (``cowrie-db control pause``, :mod:`.control`), and
   says stop when they asked it to stop;
2. a standby or an active replication slot is behind by more than ``max_replica_lag``
   minus the WAL the next batch is expected to write (the most the last
   :data:`WAL_HISTORY` batches wrote), so that the batch does not take the lag past
   the limit (PostgreSQL, :mod:`.health`). A batch that alone writes more than the
   limit cannot keep it: then the batch waits only while the lag is over the limit,
   and a warning says to lower ``batch_time`` or ``batch_size``;
3. the WAL written since the previous batch began, at ``max_wal_rate``, needs more time
   than has passed: batches are spaced so that the rate stays under the knob.

Knobs changed by ``cowrie-db control set`` are applied here, before the batch they
first apply to. While it holds, it is asked again every second (:data:`POLL_S`), and
each time writes its state to the progress row (a heartbeat that ``status`` and
``control`` read); the walker rewrites the status file.

Its input is narrow, as GitLab's health indicators take a small context rather than
the whole migration: the run it records on (:class:`~.run.Run`: the knobs in force,
the engine's state, the waits), a clock, a heartbeat (write the run's columns, read
the commands back) and a health reading. Each wait is logged when it starts and when
it ends (which signal, its value, the limit, how long), counted per signal on the run
for the summary, ``status`` and the status file; the time waited counts in the ETA
(:class:`~.run.Pace`).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from cowrieprocessor.backfill import control
from cowrieprocessor.backfill.control import PAUSE, STOP, Command
from cowrieprocessor.backfill.health import Reading
from cowrieprocessor.backfill.knobs import KnobError, show_bytes
from cowrieprocessor.backfill.progress import as_utc
from cowrieprocessor.backfill.run import Clock, Run

log = logging.getLogger("cowrieprocessor.backfill")

POLL_S = 1.0  # while waiting: how often the server and the progress row are looked at
WAL_HISTORY = 5  # the next batch's WAL is expected to be the most of this many before it
PAUSED_LOG_EVERY_S = 60.0  # "paused by operator since ..." once a minute
# the signals a wait is counted under
PAUSED, REPLICA_LAG, WAL_RATE = "paused", "replica_lag", "wal_rate"
GO, WAIT, STOP_RUN = "go", "wait", "stop"

Heartbeat = Callable[[], Command]  # write the run's columns, read the commands back
HealthReading = Callable[[], Reading]  # the server's health now (retried by the caller)


@dataclass(frozen=True)
class Decision:
    """What the next batch may do: ``go`` after ``seconds`` (``pause_ms``), ``wait``
    ``seconds`` and ask again, or ``stop`` (the run ends; ``reason`` says why)."""

    action: str
    seconds: float = 0.0
    reason: str = ""

    @property
    def go(self) -> bool:
        return self.action == GO

    @property
    def stop(self) -> bool:
        return self.action == STOP_RUN


@dataclass
class _Hold:
    """A signal holding the job back now: since when, and what it said."""

    since: float
    detail: str
    last_log: float
    waited: float = 0.0  # seconds actually waited (a WAL spacing episode spans batches)


class Governor:
    """Decides, before each batch, whether it may start; see the module docstring.

    ``heartbeat`` is None when nothing steers the run (a dry run writes no progress
    row); ``health`` is None when there is no server to read (SQLite, a dry run).
    """

    def __init__(
        self,
        run: Run,
        *,
        heartbeat: Heartbeat | None = None,
        health: HealthReading | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.run = run
        self.start_knobs = run.knobs
        self.heartbeat = heartbeat
        self.health = health
        self.clock = clock or run.clock
        self.command = Command()
        self.holds: dict[str, _Hold] = {}
        self._held: set[str] = set()  # the signals that held the coming batch back
        self._waiting: tuple[float, set[str]] | None = None  # the wait asked for last
        self._wal_first: tuple[float, int] | None = None
        self._wal_last: tuple[float, int] | None = None  # (when, WAL lsn): the last batch
        self._batch_wal: deque[int] = deque(maxlen=WAL_HISTORY)  # WAL from batch to batch
        self._warned_big_batch = False
        self._first_look = True

    def received(self, row: dict[str, Any] | None) -> None:
        """The control columns read back by the batch's save (None: a new row)."""
        self.command = Command.of(row)

    # -- before each batch -------------------------------------------------------------

    def decide(self) -> Decision:
        """One look: may the next batch go? Asked again after each ``wait``."""
        self._count_waited()
        if self._first_look:  # a command sent while the run was starting up
            self._first_look = False
            self.poll()
        self._apply_knobs()
        run = self.run
        if self.command.control == STOP:
            run.stopping("stop asked by operator")
            self.poll()
            return Decision(
                STOP_RUN,
                reason=f"stopped by operator (cowrie-db control stop at "
                f"{_at(self.command.at)}) after batch {run.state.batches}; rerun to resume",
            )
        reading = self._read_health()
        holding = self._holding(reading)
        for signal in [s for s in self.holds if s not in holding]:
            # WAL spacing is one episode over many batches: it ends only when a batch
            # finds nothing to wait for from the start
            if signal != WAL_RATE or not self._held:
                self._end_hold(signal)
        if not holding:
            self._held = set()
            run.running()
            if reading is not None and reading.wal_lsn is not None:
                now = self.clock()
                if self._wal_last is not None:
                    self._batch_wal.append(max(reading.wal_lsn - self._wal_last[1], 0))
                self._wal_first = self._wal_first or (now, reading.wal_lsn)
                self._wal_last = (now, reading.wal_lsn)
            return Decision(GO, run.knobs.pause_ms / 1000)
        for signal, detail in holding.items():
            self._hold(signal, detail, first=signal not in self._held)
        self._held |= set(holding)
        reason = "; ".join(holding.values())
        run.held(paused=PAUSED in holding, detail=reason)
        self.poll()
        self._waiting = (self.clock(), set(holding))
        return Decision(WAIT, self._step(reading, holding), reason)

    def end(self) -> None:
        """The run ends: count the last wait, close the holds (with their log lines)."""
        self._count_waited()
        for signal in list(self.holds):
            self._end_hold(signal)

    def _count_waited(self) -> None:
        """The wait asked for last is over: its seconds go to each signal that held."""
        if self._waiting is None:
            return
        began, signals = self._waiting
        self._waiting = None
        waited = self.clock() - began
        for signal in signals:
            if signal in self.holds:
                self.holds[signal].waited += waited
            self.run.add_waited(signal, waited)

    def _holding(self, reading: Reading | None) -> dict[str, str]:
        """Each signal over its limit now, with what it says."""
        knobs = self.run.knobs
        found: dict[str, str] = {}
        if self.command.control == PAUSE:
            found[PAUSED] = f"paused by operator since {_at(self.command.at)}"
        if reading is None:
            return found
        if knobs.max_replica_lag and reading.lag is not None:
            over = self._lag_over(reading.lag, knobs.max_replica_lag)
            if over:
                found[REPLICA_LAG] = (
                    f"replica lag {show_bytes(reading.lag)} ({reading.lagging}) {over}"
                )

        wait = self._wal_spacing(reading)
        if wait > 0:
            found[WAL_RATE] = (
                f"WAL written since the last batch began needs {wait:.1f} s more to stay "
                f"under max_wal_rate {show_bytes(knobs.max_wal_rate)}/s"
            )
        return found

    def _lag_over(self, lag: int, limit: int) -> str:
        """Why a lag of ``lag`` holds the next batch back under ``limit`` ("": it does
        not): over the limit, or too close to it for the WAL the batch will write."""
        if lag > limit:
            return f"is over max_replica_lag {show_bytes(limit)}"
        expected = max(self._batch_wal, default=0)
        if expected >= limit:
            if not self._warned_big_batch:
                self._warned_big_batch = True
                log.warning(
                    "a batch writes about %s of WAL, max_replica_lag is %s: the lag can pass "
                    "the limit by one batch; lower batch_time or batch_size to keep it",
                    show_bytes(expected),
                    show_bytes(limit),
                )
            return ""
        if lag + expected > limit:
            return (
                f"plus the next batch's WAL (about {show_bytes(expected)}) would pass "
                f"max_replica_lag {show_bytes(limit)}"
            )
        return ""

    def _wal_spacing(self, reading: Reading) -> float:
        """Seconds still to wait so that the WAL since the last batch began stays under
        ``max_wal_rate`` (0 when off, unmeasured, or already under)."""
        rate = self.run.knobs.max_wal_rate
        if not rate or reading.wal_lsn is None or self._wal_last is None:
            return 0.0
        began, lsn = self._wal_last
        due = began + max(reading.wal_lsn - lsn, 0) / rate
        return max(0.0, due - self.clock())

    def _step(self, reading: Reading | None, holding: dict[str, str]) -> float:
        """How long to wait before looking again: a second, or less if WAL spacing
        alone holds the batch and ends sooner."""
        if set(holding) == {WAL_RATE} and reading is not None:
            return min(POLL_S, max(self._wal_spacing(reading), 0.001))
        return POLL_S

    def _read_health(self) -> Reading | None:
        knobs = self.run.knobs
        if self.health is None or (not knobs.max_replica_lag and not knobs.max_wal_rate):
            return None
        return self.health()

    # -- holds: logged once when they start and once when they end ---------------------

    def _hold(self, signal: str, detail: str, *, first: bool) -> None:
        """``signal`` holds the next batch back; ``first``: the first look before it."""
        now = self.clock()
        hold = self.holds.get(signal)
        if first:
            self.run.count_wait(signal)
        if hold is None:
            self.holds[signal] = _Hold(now, detail, now)
            log.warning(
                "%s: waiting before batch %d%s",
                detail,
                self.run.state.batches + 1,
                "; `cowrie-db control resume` to go on" if signal == PAUSED else "",
            )
            return
        hold.detail = detail
        if signal == PAUSED and now - hold.last_log >= PAUSED_LOG_EVERY_S:
            hold.last_log = now
            log.info("%s (%.0f min)", detail, (now - hold.since) / 60)

    def _end_hold(self, signal: str) -> None:
        hold = self.holds.pop(signal)
        if signal == PAUSED:
            log.warning("resumed by operator after %.1f s paused", hold.waited)
        elif signal == REPLICA_LAG:
            log.warning(
                "replica lag is under max_replica_lag %s again: waited %.1f s",
                show_bytes(self.run.knobs.max_replica_lag),
                hold.waited,
            )
        else:
            log.info(
                "WAL spacing ended (max_wal_rate %s/s): batches were held back %.1f s in all",
                show_bytes(self.run.knobs.max_wal_rate),
                hold.waited,
            )

    # -- commands ------------------------------------------------------------------------

    def poll(self) -> None:
        """Heartbeat: write the engine's state, read the commands (one statement)."""
        if self.heartbeat is not None:
            self.command = self.heartbeat()

    def _apply_knobs(self) -> None:
        cmd = self.command
        if cmd.seq <= self.run.applied_seq:
            return
        self.run.applied_seq = cmd.seq
        try:
            new = self.start_knobs.with_overrides(cmd.knobs, control.SET_SOURCE)
        except KnobError as exc:
            log.error("ignoring cowrie-db control set: %s", exc)
            return
        changed = self.run.change_knobs(new)
        log.warning(
            "knobs changed by operator (cowrie-db control set at %s), from batch %d: %s",
            _at(cmd.at),
            self.run.state.batches + 1,
            "; ".join(changed) or "no change",
        )

    # -- the summary ---------------------------------------------------------------------

    @property
    def measures_wal(self) -> bool:
        """Whether a batch's WAL position was read (then the run's end is read too)."""
        return self._wal_last is not None

    def wal_at_end(self, reading: Reading) -> None:
        """The WAL position when the run ended, for :meth:`wal_written`."""
        if reading.wal_lsn is not None:
            self._wal_last = (self.clock(), reading.wal_lsn)

    def wal_written(self) -> tuple[int, float] | None:
        """WAL bytes written from the first batch's start to the run's end, and seconds
        (None when no health signal was on, or on SQLite)."""
        if self._wal_first is None or self._wal_last is None:
            return None
        (t0, lsn0), (t1, lsn1) = self._wal_first, self._wal_last
        return lsn1 - lsn0, t1 - t0


def discard_commands(conn: Connection, job: str) -> None:
    """A run starts: forget what an earlier run was told (see
    :func:`control.discard_commands`), with a warning naming it."""
    left = control.discard_commands(conn, job)
    if left.control or left.knobs:
        log.warning(
            "discarding control commands left by an earlier run of %s: %s",
            job,
            ", ".join(
                ([left.control] if left.control else [])
                + [f"set {k}={v}" for k, v in sorted(left.knobs.items())]
            ),
        )


def _at(when: datetime | None) -> str:
    when = as_utc(when)
    if when is None:
        return "?"
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")


def describe_waits(waits: dict[str, dict[str, float]]) -> str:
    """``paused 1 time(s), 30.0 s, replica_lag ...`` or ``never``."""
    if not waits:
        return "never"
    return ", ".join(
        f"{signal} {int(w['waits'])} time(s), {w['seconds']:.1f} s"
        for signal, w in sorted(waits.items())
    )
