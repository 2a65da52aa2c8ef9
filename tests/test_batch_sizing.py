"""How big each range is: adaptive (steered toward batch_time) or fixed (batch_size)."""

from __future__ import annotations

from collections import defaultdict

import pytest

from cowrieprocessor.backfill import BackfillKnobs, BatchReport, run_backfill
from cowrieprocessor.backfill.progress import CATCHUP, WALK
from cowrieprocessor.backfill.sizing import (
    ADAPTIVE_FIRST_BATCH,
    CATCHUP_REACH,
    BatchSizer,
)
from cowrieprocessor.testing.seed import at_0002, seed_random


def test_adaptive_sizes_follow_the_batch_time_within_bounds() -> None:
    sizer = BatchSizer(BackfillKnobs(batch_size=20_000, batch_time=250))
    sizer.start_phase(WALK)
    assert sizer.size == ADAPTIVE_FIRST_BATCH
    sizer.observe(1_000, 0.05)  # 5 x too fast: at most doubled
    assert sizer.size == 2_000
    sizer.observe(2_000, 0.5)  # 2 x too slow: halved
    assert sizer.size == 1_000
    sizer.observe(1_000, 5.0)  # 20 x too slow: at most halved
    assert sizer.size == 500
    sizer.observe(500, 0.2)  # 0.2 s for 500 rows: 625 rows take 250 ms
    assert sizer.size == 625
    for _ in range(20):
        sizer.observe(sizer.size, 0.001)
    assert sizer.size == 20_000  # never above batch_size in the walk


def test_adaptive_catch_up_reaches_further_and_the_walk_is_clamped_back() -> None:
    sizer = BatchSizer(BackfillKnobs(batch_size=1_000, batch_time=250))
    sizer.start_phase(CATCHUP)
    for _ in range(20):
        sizer.observe(sizer.size, 0.001)
    assert sizer.size == 1_000 * CATCHUP_REACH
    sizer.start_phase(WALK)
    assert sizer.size == 1_000


def test_fixed_sizes_ignore_time_in_every_phase() -> None:
    sizer = BatchSizer(BackfillKnobs(batch_size=500, batch_time=0))
    for phase in (WALK, CATCHUP):
        sizer.start_phase(phase)
        sizer.observe(500, 30.0)
        sizer.observe(500, 0.0001)
        assert sizer.size == 500


def _range_sizes(url: str, knobs: BackfillKnobs) -> dict[str, list[int]]:
    """Rows per committed range, per phase, from a real run (the last range left out)."""
    engine = at_0002(url)
    with engine.begin() as conn:
        seed_random(conn, 3000, 200)
    sizes: dict[str, list[int]] = defaultdict(list)
    last_done: dict[str, int] = defaultdict(int)

    def record(report: BatchReport) -> None:
        if report.hi is not None:
            sizes[report.phase].append(report.done - last_done[report.phase])
        last_done[report.phase] = report.done

    run_backfill(engine, knobs, on_batch=record)
    engine.dispose()
    return sizes


def test_a_real_run_keeps_walk_ranges_within_batch_size(db_url: str) -> None:
    sizes = _range_sizes(db_url, BackfillKnobs(batch_size=100))
    assert sizes[WALK] and max(sizes[WALK]) <= 100
    if db_url.startswith("sqlite"):  # the catch-up walks every range again
        assert max(sizes[CATCHUP]) > 100  # fast, nearly read-only ranges grow past it
        assert max(sizes[CATCHUP]) <= 100 * CATCHUP_REACH
    else:  # it lists the ~60 unmatched sessions: one (last) range
        assert sizes[CATCHUP] == []


def test_a_real_run_with_fixed_batches_has_exact_ranges(db_url: str) -> None:
    # ranges of keys hold exactly batch_size (a range of blocks ends with its round)
    sizes = _range_sizes(db_url, BackfillKnobs(batch_size=100, batch_time=0, walk_order="key"))
    assert set(sizes[WALK]) == {100}
    assert len(sizes[WALK]) == 3000 // 100
    if db_url.startswith("sqlite"):
        assert set(sizes[CATCHUP]) == {100}
        assert len(sizes[CATCHUP]) == 3000 // 100
    else:
        assert sizes[CATCHUP] == []


@pytest.mark.parametrize("batch_size", [1, 7])
def test_tiny_fixed_batches_still_cover_every_session(sqlite_url: str, batch_size: int) -> None:
    engine = at_0002(sqlite_url)
    with engine.begin() as conn:
        seed_random(conn, 30, 10)
    result = run_backfill(engine, BackfillKnobs(batch_size=batch_size, batch_time=0))
    assert result.batches == 2 * (30 // batch_size + 1)
    assert result.rows_updated > 20
    engine.dispose()
