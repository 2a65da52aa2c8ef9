"""``cowrie-db demo-data``: fill a database at revision 0002 with synthetic data
(:mod:`cowrieprocessor.demo`, imported only when the command runs)."""

from __future__ import annotations

import argparse
from typing import TextIO

from cowrieprocessor import report
from cowrieprocessor.cli.common import EXIT_OK, AddCommand, CliError, connect, log, open_engine
from cowrieprocessor.db.integrity import require_usable_sqlite


def register(command: AddCommand) -> None:
    demo = command("demo-data", help="fill a database at 0002 with synthetic data")
    demo.add_argument("--sessions", type=int, required=True)
    demo.add_argument("--ips", type=int, required=True)
    demo.add_argument("--seed", type=int, default=1)
    demo.add_argument("--force", action="store_true", help="add to a non-empty database")
    demo.set_defaults(func=cmd_demo_data)


def cmd_demo_data(args: argparse.Namespace, out: TextIO) -> int:
    from cowrieprocessor.demo import DemoDataError, DemoSpec, generate

    engine = open_engine(args)
    try:
        with connect(engine, args.masked_url) as conn:
            require_usable_sqlite(conn)
            report.current_revisions(conn)
        spec = DemoSpec(sessions=args.sessions, ips=args.ips, seed=args.seed)
        log.info("Database: %s; generating %s", args.masked_url, spec)
        result = generate(engine, spec, force=args.force)
    except DemoDataError as exc:
        raise CliError(str(exc)) from exc
    finally:
        engine.dispose()
    out.write(
        f"Generated {result.sessions:,} sessions, {result.ips:,} IPs, {result.asns:,} "
        f"ASNs, {result.raw_events:,} raw events ({result.unmatched_sessions:,} sessions "
        f"unmatched, {result.raw_only_sessions:,} known only from raw events) in "
        f"{result.seconds:.1f} s\n"
    )
    return EXIT_OK
