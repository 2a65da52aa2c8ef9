"""``cowrie-db verify``: the backfill's validation as one command (coverage, sessions
still lacking snapshots, the runbook query's plan, the revision), PASS or FAIL per
check and a non-zero exit status on failure."""

from __future__ import annotations

import argparse
import math
from typing import TextIO

from cowrieprocessor import report
from cowrieprocessor.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    AddCommand,
    CliError,
    connect,
    open_engine,
    print_json,
)


def register(command: AddCommand) -> None:
    ve = command("verify", help="validate the backfill (non-zero exit on failure)")
    ve.add_argument("--min-coverage", type=_percent, default=95.0, metavar="PERCENT")
    ve.add_argument("--json", action="store_true")
    ve.set_defaults(func=cmd_verify)


def _percent(text: str) -> float:
    """A percentage, 0 to 100 (argparse reports the problem and exits 2)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (0 to 100)") from None
    if not math.isfinite(value) or not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{text} is not a percentage from 0 to 100")
    return value


def cmd_verify(args: argparse.Namespace, out: TextIO) -> int:
    engine = open_engine(args)
    try:
        with connect(engine, args.masked_url) as conn:
            if not report.schema_state(conn).snapshot_columns_present:
                raise CliError("session_summaries has no snapshot columns: nothing to verify")
            v = report.verify(conn, args.min_coverage)
    finally:
        engine.dispose()
    if args.json:
        print_json({"database": args.masked_url, **v.as_dict(), "ok": not v.failures}, out)
        return EXIT_FAILED if v.failures else EXIT_OK
    ok, bad = "PASS", "FAIL"
    out.write(f"Database: {args.masked_url}\n")
    out.write(
        f"[{bad if v.coverage_percent < v.min_coverage else ok}] coverage "
        f"{v.with_snapshot:,}/{v.sessions:,} ({v.coverage_percent:.2f}%, minimum "
        f"{v.min_coverage:g}%)\n"
    )
    out.write(
        f"[{bad if v.matched_missing_snapshot else ok}] matched sessions still lacking "
        f"snapshots: {v.matched_missing_snapshot:,}\n"
    )
    ios = {True: ok, False: bad, None: "----"}[v.index_only_scan]
    out.write(f"[{ios}] runbook query by index-only scan: {' / '.join(v.plan)}\n")
    out.write(f"[{ok if v.at_head else bad}] schema at head\n")
    out.write(
        f"[info] snapshot vs current inventory: {v.asn_divergent:,} ASN and "
        f"{v.country_divergent:,} country divergences (expected: IPs move)\n"
    )
    out.write(
        "[info] constraints: " + ", ".join(f"{k} {s}" for k, s in v.constraints.items()) + "\n"
    )
    for row in v.sample:
        out.write(f"  sample: {row}\n")
    for failure in v.failures:
        out.write(f"FAILED: {failure}\n")
    out.write("Verification " + ("failed\n" if v.failures else "passed\n"))
    return EXIT_FAILED if v.failures else EXIT_OK
