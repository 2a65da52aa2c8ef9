"""What a benchmark run's measurements add up to: each approach's median and spread, the
ratios between approaches (of the medians, and of each alternated pair), and the cost of
the rollback record. :mod:`benchmarks.run` measures; :mod:`benchmarks.report` formats."""

from __future__ import annotations

import operator
import statistics
from collections.abc import Callable
from typing import Any

RECORD_COST = ("walk", "walk-norecord")
# the product with 2 and 4 workers, and with defer_indexes=on (1 and 2 workers)
WORKERS = (
    "product-2w",
    "product-4w",
    "product-defer",
    "product-2w-defer",
    "product-blocks",
    "product-2w-blocks",
)


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    def med(approach: str, key: str) -> float | None:
        values = [r[key] for r in runs.get(approach, []) if r.get(key) is not None]
        return round(statistics.median(values), 3) if values else None

    summary: dict[str, Any] = {}
    for approach, entries in runs.items():
        if not entries:
            continue
        summary[approach] = {
            "seconds": med(approach, "seconds"),
            "seconds_all": [r["seconds"] for r in entries],
            "sessions_per_second": med(approach, "sessions_per_second"),
            "max_rss_mb": med(approach, "max_rss_mb"),
            "first_commit_seconds": med(approach, "first_commit_seconds"),
        }
        if "batch_seconds" in entries[0]:
            for key in ("p50", "p95", "max"):
                values = [r["batch_seconds"][key] for r in entries]
                summary[approach][f"batch_{key}"] = round(statistics.median(values), 4)
            summary[approach]["batch_max_all"] = max(r["batch_seconds"]["max"] for r in entries)
        if "walk_seconds" in entries[0]:
            summary[approach]["walk_seconds"] = med(approach, "walk_seconds")
            summary[approach]["walk_seconds_all"] = [r["walk_seconds"] for r in entries]
        if approach == "limit":
            summary[approach]["steps"] = {
                k: round(statistics.median(r["steps"][k] for r in entries), 3)
                for k in entries[0]["steps"]
            }
        if "phases" in entries[0]:  # the product (alembic upgrade head), any knobs
            summary[approach]["backfill_seconds"] = round(
                statistics.median(r["phases"]["backfill"] for r in entries), 3
            )
            summary[approach]["phases"] = {
                k: round(statistics.median(r["phases"][k] for r in entries), 3)
                for k in entries[0]["phases"]
            }
    ratios: dict[str, Any] = {}
    if all(a in summary for a in RECORD_COST):
        ratios |= record_cost(runs)
    if "product" in summary and "limit" in summary:
        ratios |= whole_ratio(summary, runs, "product_over_limit", "product", "limit")
        # the walk alone against the limit's UPDATE alone: the per-batch cost, without the
        # fixed costs (start-up, index builds, VACUUM, validation) that both pay
        walk = summary["product"]["phases"].get("walk")
        update = summary["limit"]["steps"].get("update")
        if walk and update:
            ratios["walk_over_update"] = round(walk / update, 3)
            ratios |= pair_ratios(
                "walk_over_update",
                runs["product"],
                runs["limit"],
                lambda r: r["phases"]["walk"],
                lambda r: r["steps"]["update"],
            )
    for parallel in [a for a in WORKERS if a in summary]:
        # the walk with workers against the database's one UPDATE, and one worker
        name = parallel.removeprefix("product-")
        if "limit" in summary:
            ratios |= whole_ratio(summary, runs, f"{name}_over_limit", parallel, "limit")
            walk = summary[parallel]["phases"].get("walk")
            update = summary["limit"]["steps"].get("update")
            if walk and update:
                ratios[f"{name}_walk_over_update"] = round(walk / update, 3)
        if "product" in summary:
            ratios |= whole_ratio(summary, runs, f"{name}_over_1w", parallel, "product")
    if "product" in summary and "product-key" in summary:
        # the join-back by key (Citus) against the ctid join-back, on the same table
        ratios |= whole_ratio(summary, runs, "key_over_ctid", "product-key", "product")
        walks = (
            summary["product-key"]["phases"].get("walk"),
            summary["product"]["phases"].get("walk"),
        )
        if walks[0] and walks[1]:
            ratios["key_over_ctid_walk"] = round(walks[0] / walks[1], 3)
    if "product" in summary and "upstream" in summary:
        ratios["upstream_over_product"] = round(
            summary["upstream"]["seconds"] / summary["product"]["seconds"], 2
        )
        ratios["upstream_over_product_backfill"] = round(
            summary["upstream"]["seconds"] / summary["product"]["backfill_seconds"], 2
        )
    digests = {r["result"]["digest"] for entries in runs.values() for r in entries if "result" in r}
    summary["ratios"] = ratios
    summary["same_result"] = len(digests) == 1 if digests else None
    return summary


def whole_ratio(
    summary: dict[str, Any], runs: dict[str, list[dict[str, Any]]], name: str, a: str, b: str
) -> dict[str, Any]:
    """``a`` / ``b`` of the whole runs: the medians' ratio, each pair's and their spread."""
    seconds: Callable[[dict[str, Any]], float] = operator.itemgetter("seconds")
    medians = round(summary[a]["seconds"] / summary[b]["seconds"], 3)
    return {name: medians, **pair_ratios(name, runs[a], runs[b], seconds, seconds)}


def pair_ratios(
    name: str,
    firsts: list[dict[str, Any]],
    seconds: list[dict[str, Any]],
    first: Callable[[dict[str, Any]], float],
    second: Callable[[dict[str, Any]], float],
) -> dict[str, Any]:
    """first / second, run by run (the runs alternate): each pair's ratio and their
    spread. The medians' ratio is the figure to quote; the spread says how much this
    machine's noise moves one pair."""
    each = [first(a) / second(b) for a, b in zip(firsts, seconds, strict=False) if second(b) > 0]
    if not each:
        return {}
    return {
        f"{name}_pairs": [round(x, 3) for x in each],
        f"{name}_spread": [round(min(each), 3), round(max(each), 3)],
    }


def record_cost(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The rollback record's cost: record / no record, of the whole engine run and of
    the walk phase, as the ratio of the medians and the spread of each pair's ratio."""
    out: dict[str, Any] = {}
    for key, name in (("seconds", "record_over_norecord"), ("walk_seconds", "record_walk")):
        with_record = [r[key] for r in runs["walk"]]
        without = [r[key] for r in runs["walk-norecord"]]
        if not with_record or not without or statistics.median(without) <= 0:
            continue
        out[name] = round(statistics.median(with_record) / statistics.median(without), 3)
        # load from elsewhere only ever adds time: the fastest runs are the least disturbed
        out[f"{name}_of_minima"] = round(min(with_record) / min(without), 3)
        of_key: Callable[[dict[str, Any]], float] = operator.itemgetter(key)
        out |= pair_ratios(name, runs["walk"], runs["walk-norecord"], of_key, of_key)
    return out
