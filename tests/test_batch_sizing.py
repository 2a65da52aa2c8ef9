"""How big each range is: adaptive (steered toward batch_time) or fixed (batch_size)."""

from __future__ import annotations

from collections import defaultdict

import pytest

from cowrieprocessor.backfill import BackfillKnobs, BatchReport, run_backfill
from cowrieprocessor.backfill.blocks import ROUNDS, BlockOrder, BlockPlan, cell_of, position
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


def test_a_range_cut_short_only_ever_shrinks_the_size() -> None:
    sizer = BatchSizer(BackfillKnobs(batch_size=20_000, batch_time=250))
    sizer.start_phase(WALK)
    for _ in range(3):
        sizer.observe(sizer.size, 0.125)  # twice as fast as asked: doubled
    assert sizer.size == 8_000
    sizer.observe(300, 0.02)  # cut at the end of its round, fast: the size stands
    assert sizer.size == 8_000
    sizer.observe(4_000, 0.5)  # cut, and slower than batch_time: shrunk by its own rate
    assert sizer.size == 2_000


def test_a_round_of_blocks_never_ends_in_a_sliver_of_a_batch() -> None:
    # one session per cell (rows per block = rounds), rounds of 100 cells, 10 segments
    order = BlockOrder(BlockPlan(1, 3, ROUNDS, 100, 10), per_block=ROUNDS)

    def cells(lo: int, asked: int, most: int = 1_000) -> tuple[int, int]:
        key = None if lo == 0 else position(lo)
        hi = order.bound_after(None, key, asked - 1)  # type: ignore[arg-type]  # no query
        assert hi is not None
        hi = order.widened(key, hi, most)
        assert hi is not None
        return cell_of(hi) - lo, order.held(key, hi, asked)

    assert cells(0, 80) == (100, 100)  # 20 left: taken along, and held as such
    assert cells(0, 80, most=90) == (80, 80)  # ... unless that passes batch_size
    assert cells(0, 60) == (60, 60)  # 40 left: a batch of its own
    assert cells(60, 60) == (40, 40)  # the round ends it
    assert cells(0, 50) == (50, 50)  # halving a round: never joined
    last = 10 * ROUNDS * 100 - 100  # the last round of the walk: to its end
    assert order.widened(position(last), position(last + 80), 1_000) is None


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
