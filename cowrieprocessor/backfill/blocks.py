"""The walk by table blocks (PostgreSQL 14+, ``walk_order=blocks``).

Why: session ids are random, so a walk by key changes rows on every page of the table
over and over: at 5M sessions nearly every change of a page is the first since a
checkpoint, and writes the whole page to the WAL (37-40 GB for a 1.7 GB table,
docs/performance.md, "Checkpoints at 5M"). This order walks the table's blocks
instead: the table is cut into *segments* of ``segment`` blocks, and each segment is
walked in ``rounds`` rounds, every round taking only the sessions whose
``hashtext(session_id) & (rounds - 1)`` is that round. A round holds about as many rows
as a batch by key (:data:`ROUND_ROWS`) and is at most one batch, and a page is changed
``rounds`` times within a second or two. Where the updates may be HOT (no index has a
snapshot column: our schema's walk, before 0004 indexes them), 8 rounds, and the old
row versions of one round leave room for the next one's HOT updates; where an index
has one (the field's databases), no update is HOT, and 2 rounds (:func:`rounds`).

**Positions.** The plan (:class:`BlockPlan`: the table's file, the oldest transaction
running when the walk began, rounds, segment, blocks) is saved in the progress row's
``walk_plan``; a position is ``#blocks:<cell>``, the cells walked: cell ``c`` is block
``c % segment`` of round ``c // segment % rounds`` of segment ``c // (segment *
rounds)``. A batch never crosses the end of a round. A rewrite of the table (VACUUM
FULL, CLUSTER, pg_repack) gives it a new file and moves every row: each batch first
takes the lock its UPDATE takes anyway and checks the file (:meth:`BlockOrder.still_valid`),
and a walk whose file changed starts again with a new plan.

**What moves.** Another writer's UPDATE may move a row the walk has not reached to a
block it has passed, and a row inserted during the walk may land in such a block. Every
version written since the walk began carries an ``xmin`` at least as new as the plan's
``since``; the catch-up pass therefore also looks at the sessions still lacking a
snapshot column that were written since then and not by a batch of the backfill (whose
rows of the rollback record carry the same xids): :data:`~.sql.MOVED_CATCHUP_NEEDS`.
So the walk by blocks needs the rollback record.

**Where.** A TID Range Scan needs PostgreSQL 14 (before, a range of ``ctid`` reads the
whole table); ``ctid`` means nothing across Citus's shards; a partitioned table is
walked by key (its leaves are the workers' stripes). :func:`refusal` names what is
missing.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text

from cowrieprocessor.backfill import sql
from cowrieprocessor.backfill.keys import KeyOrder
from cowrieprocessor.db import partitions
from cowrieprocessor.db.ddl import show_name

PREFIX = "#blocks:"
PLAN_PREFIX = "blocks:"
# Measured at 1.68M sessions on our schema, two workers (docs/performance.md, "The walk
# by blocks"): 8 rounds of segments whose round holds about 6,000 rows took 25.1 s,
# 16 rounds 28.8 s, 4 rounds 27.2 s (and 1.4 times the WAL); rounds of 40,000 rows
# 38.4 s, with batches of up to 0.9 s. A round is at most one batch.
ROUNDS = 8
# Where an index has a snapshot column, no update of the walk is HOT, and the room that
# more rounds leave on a page only keeps a new row version among its old neighbours:
# on the field's shape at 1.68M, one worker, 2 rounds walked in 77.3-81.1 s against
# 87.2-92.1 s for 8 (1.00x the limit's UPDATE against 1.16x); two workers took 0.69x
# the limit's whole upgrade against 0.75x (docs/performance.md, "Where a batch's time
# goes").
ROUNDS_NOT_HOT = 2
ROUND_ROWS = 6_000
MIN_SERVER = 140000  # server_version_num: TID Range Scans
ROWS_PER_BLOCK_GUESS = 50.0  # a table the planner has never counted
FIRST_NORMAL_XID = 3
# what the walk, its resume and the workers' coordinator say when the plan's file is gone
REWRITTEN = "session_summaries was rewritten since the walk by blocks began (VACUUM FULL, CLUSTER?)"


def owns(key: str | None) -> bool:
    """Whether a saved position is of a walk by blocks."""
    return key is not None and key.startswith(PREFIX)


def position(cell: int) -> str:
    return f"{PREFIX}{cell}"


def cell_of(key: str) -> int:
    number = key[len(PREFIX) :]
    if not owns(key) or not number.isdigit():
        raise ValueError(f"not a position of a walk by blocks: {key!r}")
    return int(number)


@dataclass(frozen=True)
class BlockPlan:
    """A walk by blocks as planned when it began (module docstring)."""

    filenode: int
    since: int  # the oldest xid running when the walk began (32 bits)
    rounds: int
    segment: int  # blocks per segment
    blocks: int  # the table's blocks when the walk began

    def encode(self) -> str:
        return (
            f"{PLAN_PREFIX}{self.filenode}:{self.since}:{self.rounds}:{self.segment}:{self.blocks}"
        )

    @classmethod
    def decode(cls, saved: str | None) -> BlockPlan | None:
        if saved is None or not saved.startswith(PLAN_PREFIX):
            return None
        parts = saved[len(PLAN_PREFIX) :].split(":")
        if len(parts) != 5 or not all(p.isdigit() for p in parts):
            return None
        filenode, since, rounds, segment, blocks = map(int, parts)
        if rounds < 1 or rounds & (rounds - 1) or segment < 1:
            return None
        return cls(filenode, since, rounds, segment, blocks)

    @property
    def segments(self) -> int:
        return max(1, math.ceil(self.blocks / self.segment))

    @property
    def cells(self) -> int:
        """Every cell of the walk: its end."""
        return self.segments * self.rounds * self.segment

    def same_file(self, conn: Connection, table: str = sql.SESSIONS_TABLE) -> bool:
        """Whether ``table`` still has the file this plan's blocks refer to."""
        return conn.execute(sql.BLOCK_FILENODE, {"table": table}).scalar() == self.filenode

    def at(self, cell: int) -> str:
        """Where cell ``cell`` is, as an operator reads it."""
        segment, within = divmod(cell, self.rounds * self.segment)
        round_, block = divmod(within, self.segment)
        return f"block {segment * self.segment + block}, round {round_ + 1}/{self.rounds}"

    def stripes(self, n: int) -> list[tuple[int, int]]:
        """``n`` (or fewer, one per segment at most) ranges of cells of whole segments."""
        n = max(1, min(n, self.segments))
        per = self.rounds * self.segment
        bounds = [round(self.segments * i / n) * per for i in range(n + 1)]
        return [(lo, hi) for lo, hi in itertools.pairwise(bounds) if hi > lo]


def describe_stripe(saved_plan: str | None, lo: str | None, hi: str | None) -> str | None:
    """A stripe of whole segments (:func:`.stripes.plan_blocks`) as the table's blocks
    it covers, ``blocks [first, end) of N``; None when ``saved_plan`` is not a plan."""
    plan = BlockPlan.decode(saved_plan)
    if plan is None:
        return None
    per = plan.rounds * plan.segment

    def block(key: str | None, default: int) -> int:
        return default if key is None else min(cell_of(key) // per * plan.segment, plan.blocks)

    return f"blocks [{block(lo, 0)}, {block(hi, plan.blocks)}) of {plan.blocks}"


def read_plan(conn: Connection, table: str, batch_rows: int, parts: int) -> tuple[BlockPlan, float]:
    """A new plan for ``table`` (and its rows per block, for sizing): :func:`rounds`
    rounds of segments whose round holds :data:`ROUND_ROWS` rows (``batch_rows``, the
    largest batch, when fewer), or fewer, so that there are at least ``parts`` of them
    (the workers' stripes)."""
    row = conn.execute(sql.BLOCK_PLAN, {"table": table}).one()
    blocks = int(row.blocks)
    per_block = rows_per_block(row.tuples, row.pages)
    count, _ = rounds(conn, table)
    wanted = math.ceil(min(ROUND_ROWS, batch_rows) * count / per_block)
    segment = max(1, min(wanted, math.ceil(max(blocks, 1) / max(parts, 1))))
    # xids 0-2 are special (a since that wrapped onto one would count every row as new)
    since = max(int(row.since), FIRST_NORMAL_XID)
    return BlockPlan(int(row.filenode), since, count, segment, blocks), per_block


def rounds(conn: Connection, table: str, dropped: Collection[str] = ()) -> tuple[int, str]:
    """How many rounds a segment of ``table`` is walked in, and why: :data:`ROUNDS_NOT_HOT`
    where an index other than those named in ``dropped`` (to be dropped before the walk,
    ``defer_indexes``) has a snapshot column (``sql.NOT_HOT_INDEXES``), else
    :data:`ROUNDS`."""
    found = conn.execute(
        sql.NOT_HOT_INDEXES, {"table": table, "columns": sorted(sql.SNAPSHOT_COLUMNS)}
    ).scalars()
    names = [name for name in found if name not in dropped]
    if names:
        shown = show_name(conn.dialect, names[0])
        return ROUNDS_NOT_HOT, f"no update is HOT: index {shown} has a snapshot column"
    return ROUNDS, "no index has a snapshot column"


def rows_per_block(tuples: float | None, pages: int | None) -> float:
    if tuples is not None and pages and tuples > 0:
        return max(float(tuples) / int(pages), 1.0)
    return ROWS_PER_BLOCK_GUESS


def read_rows_per_block(conn: Connection, table: str) -> float:
    row = conn.execute(sql.BLOCK_PLAN, {"table": table}).one()
    return rows_per_block(row.tuples, row.pages)


def refusal(conn: Connection, join_back_by_key: bool, record: bool) -> str:
    """Why this database cannot be walked by blocks ("" when it can)."""
    if conn.dialect.name != "postgresql":
        return "SQLite walks its rowid order already (the table's own order)"
    version = int(conn.execute(text("SHOW server_version_num")).scalar_one())
    if version < MIN_SERVER:
        return (
            "PostgreSQL 14 or later is needed (a range of ctid is a TID Range Scan from 14; "
            f"this server is {version // 10000})"
        )
    if partitions.is_partitioned(conn):
        return "session_summaries is partitioned: its leaves are walked by key"
    if join_back_by_key:
        return "the join-back is by key (Citus): ctid ranges mean nothing across shards"
    if not record:
        return "it tells its own writes by the rollback record, which this run does not keep"
    return ""


def insisted(why: str) -> str:
    """What ``walk_order=blocks`` is told where it cannot walk (``why``: :func:`refusal`)."""
    return f"walk_order=blocks: {why}; run with walk_order=key or auto"


class BlockOrder(KeyOrder):
    """Ranges of cells of a :class:`BlockPlan` (module docstring). Sizes are in sessions,
    as for the other orders: a batch of ``n`` sessions spans ``n * rounds / rows per
    block`` cells."""

    name = "blocks"
    reads_again = False  # rows written since the walk began are its catch-up's

    def __init__(
        self,
        plan: BlockPlan,
        per_block: float,
        table: str = sql.SESSIONS_TABLE,
        upper: str | None = None,
    ) -> None:
        super().__init__(table, upper)
        self.plan = plan
        self.per_block = per_block
        self.extra_predicate = sql.WRITTEN_BEFORE

    def in_table(self, table: str) -> KeyOrder:
        raise ValueError("a walk by blocks walks one table, not partitions")

    def owns(self, key: str) -> bool:
        return owns(key)

    def _end(self) -> int:
        return cell_of(self.upper) if self.upper is not None else self.plan.cells

    def _cell(self, key: str | None) -> int:
        return 0 if key is None else cell_of(key)

    def _round_end(self, cell: int) -> int:
        """The cell after the last of ``cell``'s round: no range crosses it."""
        return (cell // self.plan.segment + 1) * self.plan.segment

    def bound_after(self, conn: Connection, lo: str | None, offset: int) -> str | None:
        start = self._cell(lo)  # whole blocks of the round: at most offset + 1 sessions
        cells = max(1, math.floor((offset + 1) * self.plan.rounds / self.per_block))
        hi = min(start + cells, self._round_end(start))
        return None if hi >= self._end() else position(hi)

    def widened(self, lo: str | None, hi: str, most: int) -> str | None:
        """A range that would leave less than half as much again of its round takes that
        rest too, while it holds at most ``most`` sessions (``batch_size``), so that no
        round ends in a sliver of a batch: a batch's fixed costs are paid once per round
        instead of twice, and the sizer does not start over from the sliver's size
        (docs/performance.md, "Where a batch's time goes")."""
        start, end = self._cell(lo), cell_of(hi)
        round_end = self._round_end(start)
        rest = round_end - end
        if rest <= 0 or rest >= (end - start) / 2 or self._about(lo, position(round_end)) > most:
            return hi
        return None if round_end >= self._end() else position(round_end)

    def param(self, key: str) -> Any:
        return cell_of(key)

    def show(self, key: str) -> str:
        return str(cell_of(key))

    def still_valid(self, conn: Connection, lo: str | None) -> bool:
        quoted = conn.dialect.identifier_preparer.quote(self.table)
        conn.execute(text(sql.lock_row_exclusive(quoted)))
        return self.plan.same_file(conn, self.table)

    def where(self, lo: str | None, hi: str | None) -> tuple[int, int, int]:
        """The range's round and blocks ``[first, end)``."""
        start = self._cell(lo)
        stop = self._cell(hi) if hi is not None else self._end()
        per = self.plan.rounds * self.plan.segment
        segment, within = divmod(start, per)
        round_, first = divmod(within, self.plan.segment)
        first += segment * self.plan.segment
        return round_, first, first + max(stop - start, 0)

    def describe(self, lo: str | None, hi: str | None) -> str:
        round_, first, end = self.where(lo, hi)
        return f"blocks [{first}, {end}) round {round_ + 1}/{self.plan.rounds}"

    def params(self, lo: str | None, hi: str | None) -> dict[str, Any]:
        round_, first, end = self.where(lo, hi)
        return {
            "blo": f"({first},0)",
            "bhi": f"({end},0)",
            "mask": self.plan.rounds - 1,
            "round": round_,
            "since": str(self.plan.since),
        }

    def has_hi(self, hi: str | None) -> bool:
        return True

    def range_sql(self, has_lo: bool, has_hi: bool) -> str:
        return sql.BLOCK_RANGE

    def count(self, conn: Connection, lo: str | None, hi: str | None) -> int:
        """About how many sessions the range holds (to split one that timed out)."""
        return self._about(lo, hi)

    def held(self, lo: str | None, hi: str | None, asked: int) -> int:
        """About the sessions the range holds: fewer than asked where its round ended it,
        more where it took the rest of its round (:meth:`bound_after`), so that a range
        that timed out is split in halves of what it holds, and the batch sizer learns
        from what it held."""
        return self._about(lo, hi)

    def _about(self, lo: str | None, hi: str | None) -> int:
        _, first, end = self.where(lo, hi)
        return max(1, math.ceil((end - first) * self.per_block / self.plan.rounds))


__all__ = ["BlockOrder", "BlockPlan", "insisted", "owns", "read_plan", "refusal", "rounds"]
