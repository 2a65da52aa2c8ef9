"""The batch sizer on its own (no database): adaptive ranges steered toward batch_time
by the seconds each batch took, within their bounds; fixed ranges of batch_size."""

from __future__ import annotations

import pytest

from cowrieprocessor.backfill.knobs import BackfillKnobs
from cowrieprocessor.backfill.progress import CATCHUP, WALK
from cowrieprocessor.backfill.sizing import (
    ADAPTIVE_FIRST_BATCH,
    ADAPTIVE_GROWTH,
    ADAPTIVE_SHRINK,
    BatchSizer,
)


def walking(batch_size: int = 20_000, batch_time: int = 250) -> BatchSizer:
    sizer = BatchSizer(BackfillKnobs(batch_size=batch_size, batch_time=batch_time))
    sizer.start_phase(WALK)
    return sizer


def test_sizes_converge_on_a_server_of_steady_speed() -> None:
    sizer = walking()
    per_row = 0.0001  # seconds a row takes: 2,500 rows fill the 250 ms batch_time
    for _ in range(10):
        sizer.observe(sizer.size, sizer.size * per_row)
    assert sizer.size == 2_500


def test_growth_is_capped_however_fast_a_batch_was() -> None:
    sizer = walking()
    sizer.observe(ADAPTIVE_FIRST_BATCH, 0.0)  # too fast to measure
    assert sizer.size == ADAPTIVE_FIRST_BATCH * ADAPTIVE_GROWTH
    sizer.observe(sizer.size, 1e-6)
    assert sizer.size == ADAPTIVE_FIRST_BATCH * ADAPTIVE_GROWTH**2


def test_a_slow_batch_shrinks_the_next_at_most_by_half() -> None:
    sizer = walking()
    sizer.observe(1_000, 0.3)  # a little slow: 250/300 of it
    assert sizer.size == 833
    sizer.observe(833, 60.0)  # a lock wait: halved, not cut to nothing
    assert sizer.size == round(833 * ADAPTIVE_SHRINK)


def test_sizes_stay_between_one_row_and_batch_size() -> None:
    sizer = walking(batch_size=1_500)
    for _ in range(5):
        sizer.observe(sizer.size, 0.001)
    assert sizer.size == 1_500
    for _ in range(30):
        sizer.observe(sizer.size, 100.0)
    assert sizer.size == 1
    sizer.observe(0, 0.0)  # an empty range tells nothing
    assert sizer.size == 1


def test_a_range_that_timed_out_is_never_asked_for_again() -> None:
    sizer = walking()
    sizer.observe(1_000, 0.05)
    assert sizer.size == 2_000
    sizer.timed_out(1_600)
    assert sizer.size == 800
    sizer.timed_out(1)
    assert sizer.size == 1


def test_a_runtime_change_keeps_an_adaptive_size_within_the_new_cap() -> None:
    sizer = walking()
    for _ in range(3):
        sizer.observe(sizer.size, 0.01)
    assert sizer.size == 8_000
    sizer.retune(BackfillKnobs(batch_size=5_000, batch_time=250))
    assert sizer.size == 5_000
    sizer.retune(BackfillKnobs(batch_size=50_000, batch_time=1_000))
    assert sizer.size == 5_000  # it grows from there, toward the new batch_time
    sizer.observe(5_000, 0.5)
    assert sizer.size == 10_000


def test_fixed_sizes_take_a_new_batch_size_at_once_and_ignore_time() -> None:
    sizer = walking()
    sizer.retune(BackfillKnobs(batch_size=700, batch_time=0))
    assert sizer.size == 700
    sizer.observe(700, 90.0)
    sizer.timed_out(700)  # a fixed size is what the operator asked for
    assert sizer.size == 700
    sizer.start_phase(CATCHUP)
    assert sizer.size == 700


@pytest.mark.parametrize("batch_size", [1, 999])
def test_the_first_adaptive_batch_is_small_unless_batch_size_is_smaller(
    batch_size: int,
) -> None:
    assert walking(batch_size=batch_size).size == min(batch_size, ADAPTIVE_FIRST_BATCH)
