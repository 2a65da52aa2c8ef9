"""How many rows the next range gets: fixed, or steered toward a target duration.

By default batches are adaptive: the first is small, and each next one is resized so
that a batch takes about ``batch_time``, capped at ``batch_size``; fixed at
``batch_size`` when that is set on its own (:mod:`cowrieprocessor.backfill.knobs`).
Measured on PostgreSQL 15 (1.68M sessions, 2 cores), a row costs tens of microseconds
to update, so a fixed 20,000-row batch held its row locks for 1-2 s;
docs/performance.md has the figures behind the default.
"""

from __future__ import annotations

from cowrieprocessor.backfill.knobs import BackfillKnobs
from cowrieprocessor.backfill.progress import CATCHUP

ADAPTIVE_FIRST_BATCH = 1_000  # rows: the first commit comes quickly on any server
ADAPTIVE_GROWTH = 2.0  # a batch is at most this many times the previous one
ADAPTIVE_SHRINK = 0.5  # ... and at least this fraction of it
CATCHUP_REACH = 10  # adaptive catch-up ranges may span this many times batch_size keys


class BatchSizer:
    """Rows per range: fixed at ``batch_size``, or steered toward ``batch_time``.

    After each committed range of ``n`` rows that took ``t`` seconds, the next range
    gets ``n * batch_time / t`` rows, at most doubled, at least halved, capped at
    ``batch_size`` (GitLab's batched background migrations steer the same way).
    """

    def __init__(self, knobs: BackfillKnobs) -> None:
        self.limit = knobs.batch_size
        self.target = knobs.batch_time / 1000 if knobs.adaptive else 0.0
        self.size = min(self.limit, ADAPTIVE_FIRST_BATCH) if self.target else self.limit
        self.batch_size = knobs.batch_size
        self.phase = ""

    def start_phase(self, phase: str) -> None:
        """The catch-up pass reads ranges but writes next to nothing: when adaptive, its
        ranges are sized by time alone, up to ``CATCHUP_REACH`` times ``batch_size``."""
        self.phase = phase
        reach = CATCHUP_REACH if self.target and phase == CATCHUP else 1
        self.limit = self.batch_size * reach
        self.size = min(self.size, self.limit)

    def retune(self, knobs: BackfillKnobs) -> None:
        """New knobs while running: fixed batches take the new size at once; adaptive
        ones keep their current size within the new cap."""
        self.batch_size = knobs.batch_size
        self.target = knobs.batch_time / 1000 if knobs.adaptive else 0.0
        self.start_phase(self.phase)
        if not self.target:
            self.size = self.limit

    def observe(self, rows: int, seconds: float) -> None:
        """A committed range of ``rows`` took ``seconds``. A range that held fewer rows
        than asked (a walk by blocks ends one at the end of its round) only ever shrinks
        the size: its fixed costs weigh more on its few rows, so it would understate the
        rate, and the next range would start over from its size."""
        if not self.target or rows <= 0:
            return
        if rows < self.size and seconds <= self.target:
            return
        factor = ADAPTIVE_GROWTH if seconds <= 0 else self.target / seconds
        factor = min(max(factor, ADAPTIVE_SHRINK), ADAPTIVE_GROWTH)
        self.size = max(1, min(self.limit, round(rows * factor)))

    def timed_out(self, rows: int) -> None:
        """A range of ``rows`` hit statement_timeout: never ask for that many again."""
        if self.target:
            self.size = max(1, min(self.size, rows // 2))


def describe_sizing(knobs: BackfillKnobs, ranges: str) -> str:
    """How batches are sized, of ``ranges`` ("session_id", "rowid", "block")."""
    if not knobs.adaptive:
        return f"batch_size={knobs.batch_size} ({ranges} ranges)"
    return (
        f"adaptive batches of {ranges} ranges: {min(knobs.batch_size, ADAPTIVE_FIRST_BATCH)} "
        f"rows first, then sized toward batch_time={knobs.batch_time} ms, at most "
        f"batch_size={knobs.batch_size}"
    )
