"""Plot time and peak memory against table size from benchmark result files.

    python -m benchmarks.plot benchmarks/results/scaling.json [...] --out docs/performance.png

Needs matplotlib, which only the ``bench`` extra installs (``make bench-plot`` does it).
Several files are merged as in :mod:`benchmarks.report`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.report import rows

STYLE = {
    "product": {"marker": "o", "linestyle": "-"},
    "limit": {"marker": "s", "linestyle": "--"},
    "upstream": {"marker": "^", "linestyle": ":"},
}
COLOR = {"postgresql": "tab:blue", "sqlite": "tab:orange"}


def plot(results: list[dict[str, Any]], out: Path, title: str) -> None:
    matplotlib: Any = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")
    merged = rows(results)
    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(12, 4.8))
    for dialect in sorted({d for d, _ in merged}):
        sizes = sorted(n for d, n in merged if d == dialect)
        for approach, style in STYLE.items():
            points = [
                (n, merged[(dialect, n)]["summary"][approach])
                for n in sizes
                if approach in merged[(dialect, n)]["summary"]
            ]
            if not points:
                continue
            xs = [n for n, _ in points]
            ax_time.plot(
                xs,
                [s["seconds"] for _, s in points],
                color=COLOR.get(dialect),
                label=f"{dialect} {approach}",
                **style,
            )
            if approach == "product":
                ax_mem.plot(
                    xs,
                    [s["max_rss_mb"] for _, s in points],
                    color=COLOR.get(dialect),
                    label=f"{dialect} product (alembic process)",
                    **style,
                )
    ax_time.set_xscale("log")
    ax_time.set_yscale("log")
    ax_time.set_xlabel("sessions")
    ax_time.set_ylabel("wall time (s)")
    ax_time.set_title("Time to backfill and index")
    ax_time.grid(True, which="both", alpha=0.3)
    ax_time.legend(fontsize=8)
    ax_mem.set_xscale("log")
    ax_mem.set_ylim(0, 160)
    ax_mem.axhline(150, color="red", linewidth=0.8, linestyle=":", label="target (150 MB)")
    ax_mem.set_xlabel("sessions")
    ax_mem.set_ylabel("peak RSS (MB)")
    ax_mem.set_title("Peak memory of the migrating process")
    ax_mem.grid(True, which="both", alpha=0.3)
    ax_mem.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.plot")
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/performance.png"))
    parser.add_argument("--title", default="cowrieprocessor snapshot backfill")
    args = parser.parse_args(argv)
    results = [json.loads(p.read_text()) for p in args.results]
    try:
        plot(results, args.out, args.title)
    except ModuleNotFoundError as exc:
        print(
            f"{exc}: install it with `make bench-plot` (the project's `bench` extra)",
            file=sys.stderr,
        )
        return 1
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
