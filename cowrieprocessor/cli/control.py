"""``cowrie-db control pause|resume|stop|set KNOB=VALUE ...``: steer the job running on
this database from another terminal. The protocol, both sides and the wait for the
engine's acknowledgement, is :mod:`cowrieprocessor.backfill.control`; this module
checks the operator's input and prints."""

from __future__ import annotations

import argparse
from typing import TextIO

from cowrieprocessor import report
from cowrieprocessor.backfill import BackfillKnobs, control
from cowrieprocessor.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    AddCommand,
    CliError,
    connect,
    open_engine,
)


def register(command: AddCommand) -> None:
    co = command(
        "control",
        help="steer the running backfill or clear: pause, resume, stop, set KNOB=VALUE ...",
        description="Steer the job running on this database from another terminal, "
        "through its progress row: it takes the command before its next batch.",
    )
    co.add_argument("action", choices=("pause", "resume", "stop", "set"))
    co.add_argument(
        "settings", nargs="*", metavar="KNOB=VALUE", help="for set: e.g. batch_time=100ms"
    )
    co.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for the job to acknowledge (default 30)",
    )
    co.set_defaults(func=cmd_control)


def cmd_control(args: argparse.Namespace, out: TextIO) -> int:
    """Steer the running job from another terminal (:mod:`cowrieprocessor.backfill.control`)."""
    settings: dict[str, str] = {}
    if args.action == "set":
        if not args.settings:
            raise CliError("set what? e.g. `cowrie-db control set batch_time=100ms pause_ms=20`")
        for item in args.settings:
            name, sep, value = item.partition("=")
            if not sep or not name.strip() or not value.strip():
                raise CliError(f"{item!r} is not name=value (e.g. batch_time=100ms)")
            settings[name.strip().replace("-", "_")] = value.strip()
        BackfillKnobs().with_overrides(settings, control.SET_SOURCE)  # bad input: exit 2
    elif args.settings:
        raise CliError(
            f"`control {args.action}` takes no arguments (got {' '.join(args.settings)})"
        )
    engine = open_engine(args)
    try:
        with connect(engine, args.masked_url) as conn:
            report.current_revisions(conn)  # a newer release's progress row: hands off
            try:
                job = control.request(conn, args.action, settings or None)
            except control.NoJobRunning as exc:
                out.write(f"{exc}.\n")
                return EXIT_FAILED
            out.write(f"{args.action}: sent to {job.describe()} on {args.masked_url}\n")
            acked = control.wait_for_ack(conn, args.action, job, args.timeout)
    finally:
        engine.dispose()
    if acked is None:
        out.write(
            f"not acknowledged within {args.timeout:g} s (a long batch?); the command stays "
            "asked for: `cowrie-db status` shows when it is taken\n"
        )
    else:
        out.write(f"{acked}\n")
    return EXIT_OK
