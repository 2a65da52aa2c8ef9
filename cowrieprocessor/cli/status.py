"""``cowrie-db status``: the progress of a running or finished job, from any terminal
(the progress table, and the status file if asked), as text or JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, TextIO

from cowrieprocessor import report
from cowrieprocessor.backfill.control import FINISHED
from cowrieprocessor.backfill.governor import describe_waits
from cowrieprocessor.backfill.progress import DONE
from cowrieprocessor.cli.common import (
    EXIT_OK,
    STATUS_FILE_NAME,
    AddCommand,
    CliError,
    connect,
    fmt_seconds,
    open_engine,
    print_json,
)


def register(command: AddCommand) -> None:
    st = command("status", help="progress of a running or finished backfill")
    st.add_argument("--json", action="store_true")
    st.add_argument("--status-file", metavar="PATH", help="also show this status file (or dir)")
    st.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    engine = open_engine(args)
    try:
        with connect(engine, args.masked_url) as conn:
            state = report.schema_state(conn)
            jobs = report.job_status(conn)
    finally:
        engine.dispose()
    status_file: dict[str, Any] | None = None
    if args.status_file:
        path = Path(args.status_file)
        if path.is_dir():
            path = path / STATUS_FILE_NAME
        try:
            status_file = json.loads(path.read_text())
        except FileNotFoundError:
            raise CliError(f"status file {path} does not exist") from None
        except json.JSONDecodeError as exc:
            raise CliError(f"status file {path} is not JSON: {exc}") from None
    if args.json:
        print_json(
            {
                "database": args.masked_url,
                "revision": state.current,
                "head": state.head,
                "jobs": [j.as_dict() for j in jobs],
                "status_file": status_file,
            },
            out,
        )
        return EXIT_OK
    out.write(f"Database: {args.masked_url}\n")
    out.write(f"Revision: {', '.join(state.current) or '(none)'} (head {state.head})\n")
    if not jobs:
        out.write("No backfill has run on this database (no progress records).\n")
    for j in jobs:
        flag = "  STALLED?" if j.stalled else ""
        out.write(
            f"{j.job}: phase {j.phase}, {j.percent:.1f}% of the job ({j.done:,}/{j.total:,} "
            f"in this phase), {j.batch:,} batches, {j.rows_updated:,} rows updated\n"
            f"  rate {j.rate:,.0f} sessions/s, ETA {fmt_seconds(j.eta_seconds)}, "
            f"last update {j.seconds_since_update:.0f} s ago{flag}\n"
        )
        out.write(f"  state: {_describe_state(j)}\n")
        if j.running and j.knobs:
            out.write("  knobs: " + ", ".join(f"{k}={v}" for k, v in j.knobs.items()) + "\n")
        if j.waits:
            out.write(f"  held back: {describe_waits(j.waits)}\n")
        if j.workers:
            out.write(f"  workers ({len(j.workers)} stripes):\n")
            for w in j.workers:
                out.write(
                    f"    {w['worker']}: {w['stripe']}, {w['phase']}, {w['done']:,}/about "
                    f"{w['total']:,} sessions, {w['rows_updated']:,} rows updated, "
                    f"{w['batches']:,} batches, {w['state'] or 'not started'}\n"
                )
        if j.partitions:
            out.write(f"  partitions ({j.phase}):\n")
            for leaf in j.partitions:
                out.write(f"    {leaf.name}: {leaf.state} (about {leaf.sessions:,} sessions)\n")
    if status_file is not None:
        out.write(f"Status file: {json.dumps(status_file, sort_keys=True)}\n")
    return EXIT_OK


def _describe_state(j: report.JobStatus) -> str:
    if j.running:
        detail = f" ({j.run_detail})" if j.run_detail else ""
        share = f", {100 * j.wait_share:.0f}% of the last 2 min waiting" if j.wait_share else ""
        return f"{j.run_state}{detail}{share}"
    if j.phase == DONE:
        return "finished"
    return (
        "not running (stopped, or its process ended without finishing): rerun it to resume"
        if j.run_state != FINISHED
        else "not running"
    )
