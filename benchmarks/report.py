"""Turn benchmark result files into Markdown: the tables of docs/performance.md.

    python -m benchmarks.report benchmarks/results/latest.json [more.json ...]

Several files (e.g. a production-size run and a scaling run) are merged: for a given
dialect, shape and size, the last file that measured it wins. The shape is ``current``
(our schema at 0002) or ``field`` (upstream's v17 catalog); files from before shapes
existed measured ``current``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# The targets of the speed issue (#12): product / limit at most this much, by dialect and
# size (medians of alternating runs), on every shape measured; the walk alone against
# the limit's UPDATE alone at most WALK_TARGET at every size (PostgreSQL).
WHOLE_TARGET = {
    "postgresql": {500_000: 1.20, 1_680_000: 1.10, 5_000_000: 1.10},
    "sqlite": {1_680_000: 1.15},
}
WALK_TARGET = 1.10
UPSTREAM_TARGET = 20.0
BATCH_P95_TARGET = 0.5  # seconds, PostgreSQL
BATCH_MAX_TARGET = 1.0  # seconds, PostgreSQL
RSS_TARGET_MB = 100.0
RECORD_TARGET = 1.05  # the rollback record: at most 5% of the walk


def _fmt(value: Any, spec: str = ".1f", suffix: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:{spec}}{suffix}"


def _spread(ratios: dict[str, Any], name: str, digits: int = 2) -> str:
    """The lowest and highest ratio of one alternating pair, and how many pairs ("-" in
    a result file written before pairs were recorded)."""
    lo_hi = ratios.get(f"{name}_spread")
    if not lo_hi:
        return "-"
    return f"{lo_hi[0]:.{digits}f}-{lo_hi[1]:.{digits}f} (n={len(ratios[f'{name}_pairs'])})"


def shaped_rows(results: list[dict[str, Any]]) -> dict[tuple[str, str, int], dict[str, Any]]:
    """(dialect, shape, sessions) -> that measurement's summary (plus sizes)."""
    merged: dict[tuple[str, str, int], dict[str, Any]] = {}
    for result in results:
        for size in result.get("sizes", []):
            shape = size.get("shape", "current")
            for dialect, data in size["dialects"].items():
                merged[(dialect, shape, size["sessions"])] = {
                    "ips": size["ips"],
                    "summary": data["summary"],
                    "repeats": len(data["runs"].get("product", [])),
                    "walk_repeats": len(data["runs"].get("walk", [])),
                }
    return merged


def rows(
    results: list[dict[str, Any]], shape: str = "current"
) -> dict[tuple[str, int], dict[str, Any]]:
    """(dialect, sessions) -> the summary of that measurement on one shape."""
    return {(d, n): row for (d, sh, n), row in shaped_rows(results).items() if sh == shape}


def markdown(*results: dict[str, Any]) -> str:
    merged = shaped_rows(list(results))
    out = [
        "| dialect | shape | sessions | product | sessions/s | limit | product / limit "
        "| pairs | walk / UPDATE | pairs | upstream | upstream / product "
        "| batch p50 / p95 / max | first commit | peak RSS | same data |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---|---:|---:|---|---:|---:|---|",
    ]
    for (dialect, shape, sessions), row in sorted(merged.items()):
        s = row["summary"]
        product = s.get("product", {})
        limit = s.get("limit", {})
        upstream = s.get("upstream", {})
        ratios = s.get("ratios", {})
        same = s.get("same_result")
        same_text = "yes" if same else "NO" if same is False else "-"
        batches = (
            f"{_fmt(product.get('batch_p50'), '.2f')} / {_fmt(product.get('batch_p95'), '.2f')} "
            f"/ {_fmt(product.get('batch_max_all'), '.2f')} s"
        )
        out.append(
            f"| {dialect} | {shape} | {sessions:,} "
            f"| {_fmt(product.get('seconds'), '.1f', ' s')} "
            f"| {_fmt(product.get('sessions_per_second'), ',.0f')} "
            f"| {_fmt(limit.get('seconds'), '.1f', ' s')} "
            f"| {_fmt(ratios.get('product_over_limit'), '.2f', 'x')} "
            f"| {_spread(ratios, 'product_over_limit')} "
            f"| {_fmt(ratios.get('walk_over_update'), '.2f', 'x')} "
            f"| {_spread(ratios, 'walk_over_update')} "
            f"| {_fmt(upstream.get('seconds'), '.0f', ' s')} "
            f"| {_fmt(ratios.get('upstream_over_product'), '.1f', 'x')} "
            f"| {batches} | {_fmt(product.get('first_commit_seconds'), '.2f', ' s')} "
            f"| {_fmt(product.get('max_rss_mb'), '.0f', ' MB')} "
            f"| {same_text} |"
        )
    return "\n".join(out)


def join_back(*results: dict[str, Any]) -> str:
    """The join-back by key (Citus's path) against the ctid join-back, where measured."""
    out = [
        "| dialect | shape | sessions | by ctid | by key | key / ctid | pairs "
        "| walk key / ctid | batch p95 by key | same data |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for (dialect, shape, sessions), row in sorted(shaped_rows(list(results)).items()):
        s = row["summary"]
        ratios = s.get("ratios", {})
        if "key_over_ctid" not in ratios:
            continue
        same = s.get("same_result")
        out.append(
            f"| {dialect} | {shape} | {sessions:,} "
            f"| {_fmt(s['product'].get('seconds'), '.1f', ' s')} "
            f"| {_fmt(s['product-key'].get('seconds'), '.1f', ' s')} "
            f"| {_fmt(ratios.get('key_over_ctid'), '.2f', 'x')} "
            f"| {_spread(ratios, 'key_over_ctid')} "
            f"| {_fmt(ratios.get('key_over_ctid_walk'), '.2f', 'x')} "
            f"| {_fmt(s['product-key'].get('batch_p95'), '.2f', ' s')} "
            f"| {'yes' if same else 'NO' if same is False else '-'} |"
        )
    return "\n".join(out) if len(out) > 2 else ""


def record_cost(*results: dict[str, Any]) -> str:
    """The rollback record's cost: the backfill engine alone, with and without it.

    Medians (whole engine run, and its walk phase), the lowest and highest ratio of one
    pair, and the walk phase's ratio of the fastest run of each (least disturbed by
    load from elsewhere)."""
    merged = shaped_rows(list(results))
    out = [
        "| dialect | shape | sessions | with record | without | record / none (whole run) "
        "| pairs | walk phase: record / none | pairs | of the fastest | same data |",
        "|---|---|---:|---:|---:|---:|---|---:|---|---:|---|",
    ]
    found = False
    for (dialect, shape, sessions), row in sorted(merged.items()):
        s = row["summary"]
        if "walk" not in s or "walk-norecord" not in s:
            continue
        found = True
        ratios = s.get("ratios", {})
        same = s.get("same_result")
        out.append(
            f"| {dialect} | {shape} | {sessions:,} "
            f"| {_fmt(s['walk'].get('seconds'), '.1f', ' s')} "
            f"| {_fmt(s['walk-norecord'].get('seconds'), '.1f', ' s')} "
            f"| {_fmt(ratios.get('record_over_norecord'), '.3f', 'x')} "
            f"| {_spread(ratios, 'record_over_norecord', 3)} "
            f"| {_fmt(ratios.get('record_walk'), '.3f', 'x')} "
            f"| {_spread(ratios, 'record_walk', 3)} "
            f"| {_fmt(ratios.get('record_walk_of_minima'), '.3f', 'x')} "
            f"| {'yes' if same else 'NO' if same is False else '-'} |"
        )
    return "\n".join(out) if found else ""


def phases(*results: dict[str, Any]) -> str:
    """Where the product's time goes, next to the limit's steps."""
    merged = shaped_rows(list(results))
    out = [
        "| dialect | shape | sessions | product: start-up | walk | catch-up | 0004 (indexes, "
        "vacuum, validate) | limit: UPDATE | indexes | vacuum / analyze | validate |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (dialect, shape, sessions), row in sorted(merged.items()):
        p = row["summary"].get("product", {}).get("phases", {})
        steps = row["summary"].get("limit", {}).get("steps", {})
        vacuum = steps.get("vacuum_analyze", steps.get("analyze"))
        out.append(
            f"| {dialect} | {shape} | {sessions:,} | {_fmt(p.get('startup'), '.1f')} "
            f"| {_fmt(p.get('walk'), '.1f')} | {_fmt(p.get('catchup'), '.1f')} "
            f"| {_fmt(p.get('indexes_vacuum_validate'), '.1f')} "
            f"| {_fmt(steps.get('update'), '.1f')} | {_fmt(steps.get('indexes'), '.1f')} "
            f"| {_fmt(vacuum, '.1f')} | {_fmt(steps.get('validate'), '.1f')} |"
        )
    return "\n".join(out)


def targets(*results: dict[str, Any], upstream_at: int = 1_680_000) -> str:
    """The speed issue's targets against what was measured, size by size."""
    shaped = shaped_rows(list(results))
    out = ["| target | measured | met? |", "|---|---|---|"]

    def line(target: str, measured: str, ok: bool | None) -> None:
        out.append(f"| {target} | {measured} | {'yes' if ok else 'no' if ok is False else '-'} |")

    for (dialect, shape, n), row in sorted(shaped.items()):
        s = row["summary"]
        ratios = s.get("ratios", {})
        product, limit = s.get("product", {}), s.get("limit", {})
        where = f"{dialect}, {shape} shape, {n:,}"
        bound = WHOLE_TARGET.get(dialect, {}).get(n)
        ratio = ratios.get("product_over_limit")
        if bound is not None:
            line(
                f"{where}: whole upgrade <= {bound:.2f} x limit",
                f"{_fmt(ratio, '.3f', ' x')} ({_fmt(product.get('seconds'), '.1f')} s vs "
                f"{_fmt(limit.get('seconds'), '.1f')} s, medians of {row['repeats']}; "
                f"pairs {_spread(ratios, 'product_over_limit')})",
                None if ratio is None else ratio <= bound,
            )
        walk = ratios.get("walk_over_update")
        if dialect == "postgresql" and walk is not None:
            line(
                f"{where}: walk <= {WALK_TARGET:.2f} x the limit's UPDATE",
                f"{walk:.3f} x ({_fmt(product.get('phases', {}).get('walk'), '.1f')} s vs "
                f"{_fmt(limit.get('steps', {}).get('update'), '.1f')} s; "
                f"pairs {_spread(ratios, 'walk_over_update')})",
                walk <= WALK_TARGET,
            )
        if dialect == "postgresql" and "batch_p95" in product:
            p95, worst = product["batch_p95"], product.get("batch_max_all")
            line(
                f"{where}: batch p95 < {BATCH_P95_TARGET} s, max < {BATCH_MAX_TARGET:.0f} s",
                f"p50 {_fmt(product.get('batch_p50'), '.2f')} s, p95 {p95:.2f} s, "
                f"max {_fmt(worst, '.2f')} s",
                p95 < BATCH_P95_TARGET and worst is not None and worst < BATCH_MAX_TARGET,
            )
        up = s.get("upstream", {}).get("seconds")
        if dialect == "postgresql" and n == upstream_at and up is not None:
            total = up / product["seconds"]
            line(
                f"{where}: upstream >= {UPSTREAM_TARGET:.0f} x slower than the product",
                f"{total:.1f} x (upstream {up:.0f} s; the limit is "
                f"{up / limit['seconds']:.1f} x faster than upstream)",
                total >= UPSTREAM_TARGET,
            )
    rss = [
        (d, sh, n, r["summary"]["product"]["max_rss_mb"])
        for (d, sh, n), r in sorted(shaped.items())
        if r["summary"].get("product", {}).get("max_rss_mb") is not None
    ]
    if rss:
        line(
            f"peak RSS < {RSS_TARGET_MB:.0f} MB",
            ", ".join(f"{d} {sh} {n:,}: {v:.0f} MB" for d, sh, n, v in rss),
            max(v for *_, v in rss) < RSS_TARGET_MB,
        )
    for (dialect, shape, n), row in sorted(shaped.items()):
        ratios = row["summary"].get("ratios", {})
        walk = ratios.get("record_walk")
        if walk is None:
            continue
        whole = ratios.get("record_over_norecord")
        lo, hi = ratios.get("record_walk_spread", [None, None])
        line(
            f"{dialect}, {shape} shape, {n:,}: rollback record <= "
            f"{RECORD_TARGET - 1:.0%} of the walk",
            f"walk phase {walk:.3f} x (pairs {_fmt(lo, '.3f')}-{_fmt(hi, '.3f')}), whole "
            f"engine run {_fmt(whole, '.3f', ' x')}, medians of {row['walk_repeats']}",
            walk <= RECORD_TARGET,
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    paths = [Path(p) for p in (sys.argv[1:] if argv is None else argv)]
    results = [json.loads(p.read_text()) for p in paths]
    print(markdown(*results))
    print()
    print(phases(*results))
    cost = record_cost(*results)
    if cost:
        print()
        print(cost)
    keyed = join_back(*results)
    if keyed:
        print()
        print(keyed)
    print()
    print(targets(*results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
