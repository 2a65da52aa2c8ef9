"""The new knobs' units, runtime changes, and the ETA while the job waits (pure logic:
no database needed)."""

from __future__ import annotations

import pytest

from cowrieprocessor.backfill.knobs import BackfillKnobs, KnobError
from cowrieprocessor.backfill.progress import JobState, Progress
from cowrieprocessor.backfill.run import Pace

MB = 1024**2


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("0", 0),
        ("1048576", MB),
        ("512kB", 512 * 1024),
        ("64MB", 64 * MB),
        ("64 mb", 64 * MB),
        ("2GB", 2 * 1024**3),
        ("1TB", 1024**4),
    ],
)
def test_sizes_take_postgresql_units(raw: str, value: int) -> None:
    assert BackfillKnobs.from_sources({"max_replica_lag": raw}, {}).max_replica_lag == value


@pytest.mark.parametrize(("raw", "value"), [("32MB/s", 32 * MB), ("32MB", 32 * MB), ("0", 0)])
def test_rates_take_a_per_second_suffix(raw: str, value: int) -> None:
    assert BackfillKnobs.from_sources({"max_wal_rate": raw}, {}).max_wal_rate == value


@pytest.mark.parametrize("raw", ["2TB", "64MB/s", "-1MB", "1.5GB", "MB"])
def test_bad_sizes_are_refused_by_name(raw: str) -> None:
    with pytest.raises(KnobError, match="max_replica_lag"):
        BackfillKnobs.from_sources({"max_replica_lag": raw}, {})


def test_the_defaults_are_what_the_runbook_says() -> None:
    knobs = BackfillKnobs()
    assert knobs.max_replica_lag == 256 * MB and knobs.max_wal_rate == 0
    assert knobs.describe()["max_replica_lag"] == "256 MB"
    assert knobs.describe()["max_wal_rate"] == "off"


def test_runtime_overrides_follow_the_start_rules() -> None:
    start = BackfillKnobs()
    assert start.adaptive
    fixed = start.with_overrides({"batch_size": "500"}, "test")
    assert (fixed.batch_size, fixed.batch_time) == (500, 0)  # set alone: fixed, as at start
    both = start.with_overrides({"batch_size": "500", "batch_time": "100ms"}, "test")
    assert (both.batch_size, both.batch_time) == (500, 100)
    assert start.changes(both) == ["batch_size 20000 -> 500", "batch_time 250 ms -> 100 ms"]
    with pytest.raises(KnobError, match="unknown backfill knob"):
        start.with_overrides({"batchsize": "1"}, "test")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_eta_counts_the_recent_share_of_waiting() -> None:
    clock = Clock()
    pace = Pace(clock)
    clock.now += 60  # a minute of batches
    assert pace.wait_share() == 0.0
    pace.begin_wait()
    clock.now += 60  # then a minute held back
    assert pace.wait_share() == pytest.approx(0.5)
    pace.end_wait()
    assert pace.waited == pytest.approx(60)
    clock.now += 120  # two minutes of batches: the wait has left the window
    assert pace.wait_share() == 0.0

    state = JobState(job="j", sessions_total=1000)
    kwargs = {"phase": "walk", "done": 500, "elapsed": 50.0}
    free = Progress.of(state, ("walk",), **kwargs)  # type: ignore[arg-type]
    held = Progress.of(state, ("walk",), wait_share=0.5, **kwargs)  # type: ignore[arg-type]
    paused = Progress.of(state, ("walk",), wait_share=1.0, **kwargs)  # type: ignore[arg-type]
    assert free.rate == held.rate == 10.0
    assert free.eta_seconds == 50.0 and held.eta_seconds == 100.0
    assert paused.eta_seconds is None  # all waiting: no honest ETA
