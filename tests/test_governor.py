"""The governor on its own: what holds a batch back, for how long, what it logs and
counts, with a fake clock, a fake heartbeat and a fake health reading (no database, no
sleeping). The walker's side (waiting, the status file) is in test_control.py and
test_health_throttle.py, against real servers."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from cowrieprocessor.backfill import control
from cowrieprocessor.backfill.control import PAUSE, STOP, Command
from cowrieprocessor.backfill.governor import (
    PAUSED,
    POLL_S,
    REPLICA_LAG,
    WAL_RATE,
    Governor,
    describe_waits,
)
from cowrieprocessor.backfill.health import Reading
from cowrieprocessor.backfill.knobs import BackfillKnobs
from cowrieprocessor.backfill.run import Run

MB = 1024**2
OFF = BackfillKnobs(max_replica_lag=0)  # no health signal on (max_wal_rate is off by default)
AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Operator:
    """The progress row's control columns, as the heartbeat reads them back."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.command = Command()
        self.beats: list[dict[str, object]] = []

    def heartbeat(self) -> Command:
        self.beats.append(self.run.columns())
        return self.command


class Server:
    """Health readings: the WAL position and the farthest replica's lag."""

    def __init__(self) -> None:
        self.wal_lsn = 0
        self.lag: int | None = None
        self.reads = 0

    def read(self) -> Reading:
        self.reads += 1
        return Reading(self.wal_lsn, self.lag, "standby 'replica1'" if self.lag else "")


def governed(
    knobs: BackfillKnobs, *, health: bool = True
) -> tuple[Governor, Run, Clock, Operator, Server]:
    clock = Clock()
    run = Run("job", knobs, clock=clock)
    operator, server = Operator(run), Server()
    governor = Governor(
        run, heartbeat=operator.heartbeat, health=server.read if health else None, clock=clock
    )
    return governor, run, clock, operator, server


def test_nothing_holds_a_batch_back_when_no_signal_is_on() -> None:
    governor, run, _clock, operator, server = governed(OFF)
    decision = governor.decide()
    assert decision.go and decision.seconds == 0.0
    assert len(operator.beats) == 1  # the first look reads commands sent at start-up
    assert server.reads == 0  # no health knob: the server is not looked at
    assert governor.decide().go
    assert len(operator.beats) == 1  # later batches read them in their own save
    assert run.run_state == control.RUNNING and run.waits == {}


def test_pause_ms_comes_with_the_go() -> None:
    governor, *_ = governed(BackfillKnobs(pause_ms=250))
    decision = governor.decide()
    assert decision.go and decision.seconds == 0.25


def test_a_pause_waits_a_second_at_a_time_until_resume(caplog: pytest.LogCaptureFixture) -> None:
    governor, run, clock, operator, _server = governed(BackfillKnobs())
    run.state.batches = 4
    operator.command = Command(control=PAUSE, at=AT)
    caplog.set_level("INFO", "cowrieprocessor.backfill")
    for _ in range(3):
        decision = governor.decide()
        assert not decision.go and decision.seconds == POLL_S
        assert decision.reason == "paused by operator since 2026-01-02 03:04:05 UTC"
        assert run.run_state == control.PAUSED and run.detail == decision.reason
        assert json.loads(str(operator.beats[-1]["run_info"]))["detail"] == decision.reason
        clock.now += POLL_S
    operator.command = Command()  # resume: read by the heartbeat before the next wait
    assert not governor.decide().go
    clock.now += POLL_S
    assert governor.decide().go
    assert run.run_state == control.RUNNING and run.detail == ""
    assert run.waits == {PAUSED: {"waits": 1, "seconds": 4.0}}  # one wait of four seconds
    assert run.pace.waited == pytest.approx(4.0)
    assert describe_waits(run.waits) == "paused 1 time(s), 4.0 s"
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "paused by operator since 2026-01-02 03:04:05 UTC: waiting before batch 5; "
        "`cowrie-db control resume` to go on",
        "resumed by operator after 4.0 s paused",
    ]


def test_a_long_pause_is_logged_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    governor, _run, clock, operator, _server = governed(BackfillKnobs())
    operator.command = Command(control=PAUSE, at=AT)
    caplog.set_level("INFO", "cowrieprocessor.backfill")
    for _ in range(150):
        governor.decide()
        clock.now += POLL_S
    reminders = [r.getMessage() for r in caplog.records if r.levelname == "INFO"]
    assert reminders == [
        "paused by operator since 2026-01-02 03:04:05 UTC (1 min)",
        "paused by operator since 2026-01-02 03:04:05 UTC (2 min)",
    ]


def test_a_stop_is_a_decision_with_its_reason_and_says_stopping_in_the_row() -> None:
    governor, run, _clock, operator, _server = governed(BackfillKnobs())
    run.state.batches = 7
    operator.command = Command(control=STOP, at=AT)
    decision = governor.decide()
    assert decision.stop and not decision.go
    assert decision.reason == (
        "stopped by operator (cowrie-db control stop at 2026-01-02 03:04:05 UTC) after "
        "batch 7; rerun to resume"
    )
    assert run.run_state == control.STOPPING
    assert operator.beats[-1]["run_state"] == control.STOPPING


def test_a_stop_read_back_by_a_batch_save_is_obeyed_at_the_next_batch() -> None:
    governor, _run, _clock, operator, _server = governed(BackfillKnobs())
    assert governor.decide().go
    row = {"control": STOP, "control_knobs": None, "control_seq": 0, "control_at": AT}
    governor.received(row)
    assert governor.decide().stop
    assert len(operator.beats) == 2  # the first look, then the stopping state


def test_replica_lag_over_the_limit_holds_batches_until_it_is_under(
    caplog: pytest.LogCaptureFixture,
) -> None:
    governor, run, clock, _operator, server = governed(BackfillKnobs(max_replica_lag=16 * MB))
    caplog.set_level("INFO", "cowrieprocessor.backfill")
    server.lag = 16 * MB  # at the limit: not over it
    assert governor.decide().go
    server.lag = 40 * MB
    decision = governor.decide()
    assert not decision.go and decision.seconds == POLL_S
    assert decision.reason == (
        "replica lag 40 MB (standby 'replica1') is over max_replica_lag 16 MB"
    )
    assert run.run_state == control.THROTTLED
    clock.now += 1.0
    assert not governor.decide().go
    clock.now += 1.5
    server.lag = 1 * MB
    assert governor.decide().go
    assert run.waits == {REPLICA_LAG: {"waits": 1, "seconds": 2.5}}
    assert [r.getMessage() for r in caplog.records] == [
        f"{decision.reason}: waiting before batch 1",
        "replica lag is under max_replica_lag 16 MB again: waited 2.5 s",
    ]


def batches_writing(governor: Governor, server: Server, *sizes: int) -> None:
    """Let batches go that write ``sizes`` bytes of WAL each (the lag stays at 0)."""
    server.lag = 0
    for size in sizes:
        assert governor.decide().go
        server.wal_lsn += size


def test_a_batch_waits_when_its_wal_would_take_the_lag_past_the_limit() -> None:
    governor, run, _clock, _operator, server = governed(BackfillKnobs(max_replica_lag=16 * MB))
    batches_writing(governor, server, 3 * MB, 5 * MB, 4 * MB)
    assert governor.decide().go  # the third batch's WAL is now known too
    server.lag = 11 * MB  # 11 + 5 (the most a batch wrote) = 16: at the limit, not past
    assert governor.decide().go
    server.lag = 11 * MB + 1
    decision = governor.decide()
    assert not decision.go
    assert decision.reason == (
        "replica lag 11.0 MB (standby 'replica1') plus the next batch's WAL (about 5 MB) "
        "would pass max_replica_lag 16 MB"
    )
    assert run.run_state == control.THROTTLED
    server.lag = 2 * MB
    assert governor.decide().go


def test_the_expected_wal_is_the_most_of_the_last_batches() -> None:
    governor, _run, _clock, _operator, server = governed(BackfillKnobs(max_replica_lag=16 * MB))
    batches_writing(governor, server, 8 * MB, *[MB] * 5)
    assert governor.decide().go
    server.lag = 14 * MB  # the 8 MB batch is six batches back: 1 MB is expected now
    assert governor.decide().go
    server.lag = 15 * MB + 1
    assert not governor.decide().go


def test_a_batch_bigger_than_the_limit_is_said_once_and_held_only_over_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    governor, _run, _clock, _operator, server = governed(BackfillKnobs(max_replica_lag=4 * MB))
    caplog.set_level("WARNING", "cowrieprocessor.backfill")
    batches_writing(governor, server, 6 * MB, 6 * MB)
    server.lag = 3 * MB
    assert governor.decide().go
    assert governor.decide().go
    server.lag = 5 * MB
    assert not governor.decide().go
    assert [r.getMessage() for r in caplog.records][:1] == [
        "a batch writes about 6 MB of WAL, max_replica_lag is 4 MB: the lag can pass "
        "the limit by one batch; lower batch_time or batch_size to keep it"
    ]
    assert sum("a batch writes about" in r.getMessage() for r in caplog.records) == 1


def test_no_standby_visible_holds_nothing() -> None:
    governor, _run, _clock, _operator, server = governed(BackfillKnobs(max_replica_lag=MB))
    server.lag = None
    assert governor.decide().go
    assert server.reads == 1


def test_wal_spacing_keeps_the_rate_under_max_wal_rate(caplog: pytest.LogCaptureFixture) -> None:
    governor, run, clock, _operator, server = governed(
        BackfillKnobs(max_replica_lag=0, max_wal_rate=MB)
    )
    caplog.set_level("INFO", "cowrieprocessor.backfill")
    assert governor.decide().go  # the first batch: nothing measured yet
    clock.now += 0.5
    server.wal_lsn = 2 * MB + MB // 2  # 2.5 MB in 0.5 s: 2 s more to stay at 1 MB/s
    decision = governor.decide()
    assert not decision.go and decision.seconds == POLL_S
    assert "needs 2.0 s more to stay under max_wal_rate 1 MB/s" in decision.reason
    clock.now += 1.0
    assert governor.decide().seconds == POLL_S
    clock.now += 0.75
    decision = governor.decide()  # 0.25 s left: looks again when the spacing ends
    assert not decision.go and decision.seconds == pytest.approx(0.25)
    clock.now += 0.25
    assert governor.decide().go
    assert run.waits == {WAL_RATE: {"waits": 1, "seconds": 2.0}}
    # one episode over many batches: it ends only when a batch finds nothing to wait for
    clock.now += 1.0
    server.wal_lsn += 2 * MB
    assert not governor.decide().go
    clock.now += 1.0
    assert governor.decide().go
    assert run.waits == {WAL_RATE: {"waits": 2, "seconds": 3.0}}
    assert not any("WAL spacing ended" in r.getMessage() for r in caplog.records)
    clock.now += 10.0
    assert governor.decide().go  # nothing written since: nothing to wait for
    assert caplog.records[-1].getMessage() == (
        "WAL spacing ended (max_wal_rate 1 MB/s): batches were held back 3.0 s in all"
    )
    wal = governor.wal_written()
    assert wal is not None
    assert wal[0] == 4 * MB + MB // 2 and wal[1] == pytest.approx(14.5)


def test_signals_held_together_share_one_wait_each() -> None:
    knobs = BackfillKnobs(max_replica_lag=MB)
    governor, run, clock, operator, server = governed(knobs)
    operator.command = Command(control=PAUSE, at=AT)
    server.lag = 2 * MB
    decision = governor.decide()
    assert run.run_state == control.PAUSED  # paused wins over throttled
    assert (
        decision.reason.startswith("paused by operator") and "replica lag 2 MB" in decision.reason
    )
    clock.now += 1.0
    operator.command = Command()
    governor.received(None)
    assert governor.decide().go is False  # the lag still holds it
    clock.now += 1.0
    server.lag = 0
    assert governor.decide().go
    assert run.waits == {
        PAUSED: {"waits": 1, "seconds": 1.0},
        REPLICA_LAG: {"waits": 1, "seconds": 2.0},
    }


def test_knobs_set_at_runtime_apply_from_the_next_batch(caplog: pytest.LogCaptureFixture) -> None:
    governor, run, _clock, operator, _server = governed(BackfillKnobs(batch_size=500))
    run.state.batches = 2
    operator.command = Command(knobs={"pause_ms": "100", "batch_size": "300"}, seq=1, at=AT)
    caplog.set_level("INFO", "cowrieprocessor.backfill")
    decision = governor.decide()
    assert decision.go and decision.seconds == pytest.approx(0.1)
    assert (run.knobs.pause_ms, run.knobs.batch_size) == (100, 300)
    assert run.applied_seq == 1
    (message,) = [r.getMessage() for r in caplog.records]
    assert message.startswith(
        "knobs changed by operator (cowrie-db control set at 2026-01-02 03:04:05 UTC), "
        "from batch 3: "
    )
    assert "batch_size 500 -> 300" in message
    # each set adds to the start knobs, not to the last set; a seq is applied once
    governor.received(
        {"control": None, "control_knobs": '{"pause_ms": "0"}', "control_seq": 2, "control_at": AT}
    )
    assert governor.decide().seconds == 0.0
    assert run.knobs.batch_size == 500
    knobs = run.knobs
    governor.received(
        {"control": None, "control_knobs": '{"pause_ms": "9"}', "control_seq": 2, "control_at": AT}
    )
    governor.decide()
    assert run.knobs is knobs


def test_a_knob_set_that_does_not_validate_is_ignored(caplog: pytest.LogCaptureFixture) -> None:
    governor, run, _clock, operator, _server = governed(BackfillKnobs())
    operator.command = Command(knobs={"pause_ms": "-5"}, seq=1, at=AT)
    knobs = run.knobs
    assert governor.decide().go
    assert run.knobs is knobs and run.applied_seq == 1
    assert caplog.records[-1].getMessage().startswith("ignoring cowrie-db control set: ")


def test_a_knob_turned_on_while_paused_is_looked_at_before_the_next_batch() -> None:
    governor, run, clock, operator, server = governed(OFF)
    operator.command = Command(control=PAUSE, at=AT)
    server.lag = 5 * MB
    governor.decide()
    assert server.reads == 0
    operator.command = Command(knobs={"max_replica_lag": "1MB"}, seq=1, at=AT)  # and resume
    clock.now += 1.0
    assert not governor.decide().go  # the heartbeat before this wait reads the set
    assert server.reads == 0
    clock.now += 1.0
    decision = governor.decide()
    assert server.reads == 1 and not decision.go
    assert run.run_state == control.THROTTLED


def test_the_end_of_a_run_counts_the_wait_it_was_in(caplog: pytest.LogCaptureFixture) -> None:
    governor, run, clock, operator, _server = governed(BackfillKnobs())
    operator.command = Command(control=PAUSE, at=AT)
    caplog.set_level("INFO", "cowrieprocessor.backfill")
    governor.decide()
    clock.now += 0.4  # Ctrl-C in the middle of the wait
    governor.end()
    run.end(control.STOPPED)
    assert run.waits == {PAUSED: {"waits": 1, "seconds": 0.4}}
    assert caplog.records[-1].getMessage() == "resumed by operator after 0.4 s paused"
    assert run.run_state == control.STOPPED and run.pace.waited == pytest.approx(0.4)


def test_a_dry_run_is_neither_steered_nor_throttled() -> None:
    clock = Clock()
    run = Run("job", BackfillKnobs(max_replica_lag=1, pause_ms=5), dry_run=True, clock=clock)
    governor = Governor(run, clock=clock)  # no heartbeat, no health reading
    decision = governor.decide()
    assert decision.go and decision.seconds == pytest.approx(0.005)
    assert governor.wal_written() is None
