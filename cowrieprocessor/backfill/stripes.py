"""The workers' stripes (:mod:`.workers`): planned once, from the key's distribution.

On a plain table, ``n`` ranges of ``session_id`` ``(lo, hi]`` of about equal size, their
bounds quantiles of the key read without scanning the table (:mod:`.sql.stripes`: the
planner's histogram, or a page sample); on a partitioned table, one stripe per leaf. A
stripe is a progress row of its own, ``<job>/<n>`` (:data:`~.progress.WORKER_SEP`).
"""

from __future__ import annotations

import logging
from itertools import pairwise
from typing import Any

from sqlalchemy import Connection

from cowrieprocessor.backfill import blocks, progress, sql
from cowrieprocessor.backfill.blocks import BlockPlan
from cowrieprocessor.backfill.progress import JobState

log = logging.getLogger("cowrieprocessor.backfill")

SAMPLE_ROWS = 20_000  # about how many keys a page sample reads when there is no histogram


def worker_job(job: str, n: int) -> str:
    return f"{job}{progress.WORKER_SEP}{n:02d}"


# -- planning the stripes ---------------------------------------------------------------


def plan(conn: Connection, state: JobState, leaves: list[str] | None, n: int) -> list[JobState]:
    """The stripes of a walk that starts (or resumes from a single walker's ``state``),
    as the rows to write: one per leaf from the saved one on, or ``n`` ranges of keys
    after the saved position. Ends the read transaction."""
    job = state.job
    if leaves is not None:
        first = leaves.index(state.leaf) if state.leaf in leaves else 0
        stripes = [
            JobState(
                job=worker_job(job, i + 1),
                leaf=leaf,
                last_key=state.last_key if leaf == state.leaf else None,
                stripe_lo=state.last_key if leaf == state.leaf else None,
            )
            for i, leaf in enumerate(leaves[first:])
        ]
    else:
        bounds, source = quantiles(conn, state.last_key, n)
        edges = [state.last_key, *bounds, None]
        stripes = [
            JobState(job=worker_job(job, i + 1), last_key=lo, stripe_lo=lo, stripe_hi=hi)
            for i, (lo, hi) in enumerate(pairwise(edges))
        ]
        log.info(
            "%d stripe(s) of session_id, bounds from %s%s",
            len(stripes),
            source,
            "" if len(stripes) == n else f" (fewer than {n}: too few distinct keys)",
        )
    conn.rollback()
    return stripes


def plan_blocks(state: JobState, plan: BlockPlan, n: int) -> list[JobState]:
    """The stripes of a walk by blocks (:mod:`.blocks`): ``n`` ranges of whole segments of
    ``plan`` after the job's position (a walk by blocks it walked alone so far, or none)."""
    key = state.last_key
    start = blocks.cell_of(key) if key is not None and blocks.owns(key) else 0
    parts = [(max(lo, start), hi) for lo, hi in plan.stripes(n) if hi > start]
    stripes = [
        JobState(
            job=worker_job(state.job, i + 1),
            last_key=blocks.position(lo),
            stripe_lo=blocks.position(lo),
            stripe_hi=blocks.position(hi),
            walk_plan=plan.encode(),
        )
        for i, (lo, hi) in enumerate(parts)
    ]
    log.info(
        "%d stripe(s) of whole segments of the walk by blocks (%d segment(s) of %d blocks)",
        len(stripes),
        plan.segments,
        plan.segment,
    )
    return stripes


def quantiles(conn: Connection, lo: str | None, n: int) -> tuple[list[str], str]:
    """``n - 1`` keys after ``lo`` that split the rest of the table into ``n`` parts of
    about equal size (fewer when there are fewer distinct keys), and where they came from."""
    if n <= 1:
        return [], "no split"
    table = {"table": sql.SESSIONS_TABLE}
    keys = [str(k) for k in conn.execute(sql.HISTOGRAM_BOUNDS, {**table, "lo": lo}).scalars()]
    source = "the planner's histogram"
    if len(keys) < 2 * n:  # none, or too coarse to split in n
        estimate = float(conn.execute(sql.ESTIMATED_ROWS, table).scalar() or 0)
        percent = 100.0 if estimate < SAMPLE_ROWS else max(100.0 * SAMPLE_ROWS / estimate, 0.01)
        params: dict[str, Any] = {"percent": percent}
        if lo is not None:
            params["lo"] = lo
        keys = [str(k) for k in conn.execute(sql.sample_keys(lo is not None), params).scalars()]
        source = f"a {percent:.2g}% sample of its pages"
    return pick(keys, n), source


def pick(keys: list[str], n: int) -> list[str]:
    """From sorted ``keys`` (a histogram's bounds or a sample), the ``n - 1`` at the
    quantiles 1/n .. (n-1)/n, without repeats."""
    if not keys:
        return []
    found: list[str] = []
    for k in range(1, n):
        key = keys[round((len(keys) - 1) * k / n)]
        if key not in found:
            found.append(key)
    return found
