"""What may hold the next batch back, and for how long: the operator, the server's health.

Before each batch the walker asks its :class:`Governor`, which waits (holding no
transaction: each look at the server or at the progress row commits at once) while

1. the operator paused the job (``cowrie-db control pause``, :mod:`.control`), or
   raises :class:`~.errors.BackfillInterrupted` if they asked it to stop;
2. a standby or an active replication slot is more than ``max_replica_lag`` behind
   (PostgreSQL, :mod:`.health`);
3. the WAL written since the previous batch began, at ``max_wal_rate``, needs more time
   than has passed: batches are spaced so that the rate stays under the knob;

and then sleeps ``pause_ms``. Knobs changed by ``cowrie-db control set`` are applied
here, before the batch they first apply to. While it waits, it looks again every
second (:data:`POLL_S`), writes its state to the progress row (a heartbeat that
``status`` and ``control`` read), and rewrites the status file.

Each wait is logged when it starts and when it ends (which signal, its value, the
limit, how long), counted per signal for the summary, ``status`` and the status file.
The time waited counts in the ETA: :class:`Pace` keeps the share of the recent wall
clock spent waiting, and the ETA is the batches' own rate slowed by that share.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection

from cowrieprocessor.backfill import control
from cowrieprocessor.backfill.control import PAUSE, STOP, Command
from cowrieprocessor.backfill.errors import BackfillInterrupted
from cowrieprocessor.backfill.health import HealthMonitor, Reading
from cowrieprocessor.backfill.knobs import KnobError, show_bytes
from cowrieprocessor.backfill.progress import as_utc, utcnow

if TYPE_CHECKING:
    from cowrieprocessor.backfill.walker import RangeWalker

log = logging.getLogger("cowrieprocessor.backfill")

POLL_S = 1.0  # while waiting: how often the server and the progress row are looked at
PAUSED_LOG_EVERY_S = 60.0  # "paused by operator since ..." once a minute
PACE_WINDOW_S = 120.0  # the ETA's "recent" share of waiting is over this much wall clock
# the signals a wait is counted under
PAUSED, REPLICA_LAG, WAL_RATE = "paused", "replica_lag", "wal_rate"


class Pace:
    """How much of the recent wall clock went to waiting, for an honest ETA."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self.clock = clock
        self.started = clock()
        self.waited = 0.0  # seconds waited since the phase started
        self._waits: deque[tuple[float, float]] = deque()  # (start, end) of recent waits
        self._open: float | None = None

    def restart(self) -> None:
        self.started, self.waited = self.clock(), 0.0
        self._waits.clear()

    def begin_wait(self) -> None:
        if self._open is None:
            self._open = self.clock()

    def end_wait(self) -> None:
        if self._open is not None:
            end = self.clock()
            self.waited += end - self._open
            self._waits.append((self._open, end))
            self._open = None

    def waited_now(self) -> float:
        """Seconds waited in this phase, the wait going on included."""
        return self.waited + (self.clock() - self._open if self._open is not None else 0.0)

    def wait_share(self) -> float:
        """The share of the last :data:`PACE_WINDOW_S` seconds spent waiting (0..1)."""
        now = self.clock()
        since = max(self.started, now - PACE_WINDOW_S)
        while self._waits and self._waits[0][1] <= since:
            self._waits.popleft()
        spans = list(self._waits) + ([(self._open, now)] if self._open is not None else [])
        waited = sum(end - max(start, since) for start, end in spans)
        window = now - since
        return min(1.0, waited / window) if window > 0 else 0.0


@dataclass
class _Hold:
    """A signal holding the job back now: since when, and what it said."""

    since: float
    detail: str
    last_log: float
    waited: float = 0.0  # seconds actually waited (a WAL spacing episode spans batches)


class Governor:
    """Decides, before each batch, whether it may start; see the module docstring."""

    def __init__(self, walker: RangeWalker) -> None:
        self.walker = walker
        self.start_knobs = walker.knobs
        self.pace = Pace()
        self.health = HealthMonitor() if walker.dialect == "postgresql" else None
        self.steered = not walker.dry_run  # a dry run writes no progress row to steer by
        self.command = Command()
        self.applied_seq = 0
        self.state = control.RUNNING
        self.detail = ""
        self.waits: dict[str, dict[str, float]] = {}
        self.holds: dict[str, _Hold] = {}
        self.backend: int | None = None
        self._wal_first: tuple[float, int] | None = None
        self._wal_last: tuple[float, int] | None = None  # (when, WAL lsn): the last batch
        self._first_look = True

    # -- the progress row's run columns ------------------------------------------------

    def run_columns(self) -> dict[str, Any]:
        """What the engine writes beside its progress: state, knobs, waits, heartbeat."""
        snap = self.walker.progress(self.walker.phase_now)
        info = {
            **control.runner(),
            "backend": self.backend,
            "detail": self.detail,
            "knobs": self.walker.knobs.describe(),
            "waits": self.waits,
            "control_seq_applied": self.applied_seq,
            "rate": snap.rate,
            "eta_seconds": snap.eta_seconds,
            "wait_share": snap.wait_share,
        }
        return {
            "run_state": self.state,
            "run_info": json.dumps(info, sort_keys=True),
            "heartbeat_at": utcnow(),
        }

    def received(self, row: dict[str, Any] | None) -> None:
        """The control columns read back by the batch's save (None: a new row)."""
        self.command = Command.of(row)

    def discard_commands(self, conn: Connection, job: str) -> None:
        """A run starts: forget what an earlier run was told (see
        :func:`control.discard_commands`)."""
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

    def finish(self, conn: Connection | None, state: str, detail: str = "") -> None:
        """The run ends (``finished``, ``stopped`` or ``failed``, with why): close the
        waits, take a last WAL reading for the summary, and say so in the row (best
        effort, and not at all without a usable ``conn``: a failure here must not hide
        why the run ended, and the undo drops the table before)."""
        for signal in list(self.holds):
            self._end_hold(signal)
        self.pace.end_wait()
        self.state, self.detail = state, detail
        if conn is None:
            return
        try:
            if self._wal_last is not None and self.health is not None:
                reading = self.health.read(conn)
                if reading.wal_lsn is not None:
                    self._wal_last = (time.monotonic(), reading.wal_lsn)
            if self.steered:
                with self.walker.begin(conn):
                    control.heartbeat(conn, self.walker.job, self.run_columns())
        except Exception as exc:
            if conn.in_transaction():
                conn.rollback()
            log.debug("could not record the end of the run: %s", exc)

    # -- before each batch -------------------------------------------------------------

    def before_batch(self) -> None:
        """Wait while anything holds the next batch back; raise if told to stop."""
        reading: Reading | None = None
        held_now: set[str] = set()  # the signals that held this batch back
        if self._first_look:  # a command sent while the run was starting up
            self._first_look = False
            self._poll()
        while True:
            self._apply_knobs()
            if self.command.control == STOP:
                self.state, self.detail = control.STOPPING, "stop asked by operator"
                self._poll()
                raise BackfillInterrupted(
                    f"stopped by operator (cowrie-db control stop at {_at(self.command.at)}) "
                    f"after batch {self.walker.state.batches}; rerun to resume"
                )
            reading = self._read_health()
            holding = self._holding(reading)
            for signal in [s for s in self.holds if s not in holding]:
                # WAL spacing is one episode over many batches: it ends only when a
                # batch finds nothing to wait for from the start
                if signal != WAL_RATE or not held_now:
                    self._end_hold(signal)
            if not holding:
                break
            for signal, detail in holding.items():
                self._hold(signal, detail, first=signal not in held_now)
            held_now |= set(holding)
            self.state = control.PAUSED if PAUSED in holding else control.THROTTLED
            self.detail = "; ".join(holding.values())
            self.pace.begin_wait()
            self._poll()
            self.walker.write_status()
            began = time.monotonic()
            self.walker.stop.wait(self._step(reading, holding))
            for signal in holding:
                waited = time.monotonic() - began
                self.holds[signal].waited += waited
                counted = self.waits[signal]
                counted["seconds"] = round(counted["seconds"] + waited, 3)
            if self.walker.stop.is_set():
                break  # the walker raises BackfillInterrupted
        self.pace.end_wait()
        self.state, self.detail = control.RUNNING, ""
        if reading is not None and reading.wal_lsn is not None:
            now = time.monotonic()
            self._wal_first = self._wal_first or (now, reading.wal_lsn)
            self._wal_last = (now, reading.wal_lsn)
        pause = self.walker.knobs.pause_ms
        if pause and not self.walker.stop.is_set():
            self.walker.stop.wait(pause / 1000)

    def _holding(self, reading: Reading | None) -> dict[str, str]:
        """Each signal over its limit now, with what it says."""
        knobs = self.walker.knobs
        found: dict[str, str] = {}
        if self.command.control == PAUSE:
            found[PAUSED] = f"paused by operator since {_at(self.command.at)}"
        if reading is None:
            return found
        if (
            knobs.max_replica_lag
            and reading.lag is not None
            and reading.lag > knobs.max_replica_lag
        ):
            found[REPLICA_LAG] = (
                f"replica lag {show_bytes(reading.lag)} ({reading.lagging}) is over "
                f"max_replica_lag {show_bytes(knobs.max_replica_lag)}"
            )
        wait = self._wal_spacing(reading)
        if wait > 0:
            found[WAL_RATE] = (
                f"WAL written since the last batch began needs {wait:.1f} s more to stay "
                f"under max_wal_rate {show_bytes(knobs.max_wal_rate)}/s"
            )
        return found

    def _wal_spacing(self, reading: Reading) -> float:
        """Seconds still to wait so that the WAL since the last batch began stays under
        ``max_wal_rate`` (0 when off, unmeasured, or already under)."""
        rate = self.walker.knobs.max_wal_rate
        if not rate or reading.wal_lsn is None or self._wal_last is None:
            return 0.0
        began, lsn = self._wal_last
        due = began + max(reading.wal_lsn - lsn, 0) / rate
        return max(0.0, due - time.monotonic())

    def _step(self, reading: Reading | None, holding: dict[str, str]) -> float:
        """How long to wait before looking again: a second, or less if WAL spacing
        alone holds the batch and ends sooner."""
        if set(holding) == {WAL_RATE} and reading is not None:
            return min(POLL_S, max(self._wal_spacing(reading), 0.001))
        return POLL_S

    def _read_health(self) -> Reading | None:
        if self.health is None or self.walker.dry_run:
            return None
        knobs = self.walker.knobs
        if not knobs.max_replica_lag and not knobs.max_wal_rate:
            return None
        monitor = self.health
        return self.walker.retrying("reading the server's health", monitor.read)  # type: ignore[no-any-return]

    # -- holds: logged once when they start and once when they end ---------------------

    def _hold(self, signal: str, detail: str, *, first: bool) -> None:
        """``signal`` holds the next batch back; ``first``: the first look before it."""
        now = time.monotonic()
        hold = self.holds.get(signal)
        if first:
            counted = self.waits.setdefault(signal, {"waits": 0, "seconds": 0.0})
            counted["waits"] += 1
        if hold is None:
            self.holds[signal] = _Hold(now, detail, now)
            log.warning(
                "%s: waiting before batch %d%s",
                detail,
                self.walker.state.batches + 1,
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
                show_bytes(self.walker.knobs.max_replica_lag),
                hold.waited,
            )
        else:
            log.info(
                "WAL spacing ended (max_wal_rate %s/s): batches were held back %.1f s in all",
                show_bytes(self.walker.knobs.max_wal_rate),
                hold.waited,
            )

    # -- commands ------------------------------------------------------------------------

    def _poll(self) -> None:
        """Heartbeat: write the engine's state, read the commands (one statement)."""
        if not self.steered:
            return
        job = self.walker.job
        columns = self.run_columns()

        def beat(conn: Connection) -> Command:
            with self.walker.begin(conn):
                return control.heartbeat(conn, job, columns)

        self.command = self.walker.retrying("reading control commands", beat)

    def _apply_knobs(self) -> None:
        cmd = self.command
        if cmd.seq <= self.applied_seq:
            return
        self.applied_seq = cmd.seq
        try:
            new = self.start_knobs.with_overrides(cmd.knobs, control.SET_SOURCE)
        except KnobError as exc:
            log.error("ignoring cowrie-db control set: %s", exc)
            return
        changed = self.walker.knobs.changes(new)
        self.walker.apply_knobs(new)
        log.warning(
            "knobs changed by operator (cowrie-db control set at %s), from batch %d: %s",
            _at(cmd.at),
            self.walker.state.batches + 1,
            "; ".join(changed) or "no change",
        )

    # -- the summary ---------------------------------------------------------------------

    def wal_written(self) -> tuple[int, float] | None:
        """WAL bytes written from the first batch's start to the run's end, and seconds
        (None when no health signal was on, or on SQLite)."""
        if self._wal_first is None or self._wal_last is None:
            return None
        (t0, lsn0), (t1, lsn1) = self._wal_first, self._wal_last
        return lsn1 - lsn0, t1 - t0


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
