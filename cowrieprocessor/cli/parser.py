"""The ``cowrie-db`` parser: the global options, and one subparser per command, each
registered by the module that handles it (a new command: its module, and one line in
:data:`REGISTERS`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from cowrieprocessor import __version__
from cowrieprocessor.cli import alembic_commands, check, control, demo, jobs, status, verify
from cowrieprocessor.cli.common import AddCommand

# Each module's ``register``, in the order ``cowrie-db --help`` lists the commands.
REGISTERS: tuple[Callable[[AddCommand], None], ...] = (
    check.register,  # check
    jobs.register,  # backfill, clear
    status.register,  # status
    control.register,  # control
    verify.register,  # verify
    alembic_commands.register,  # upgrade, downgrade, current, history
    demo.register,  # demo-data
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cowrie-db",
        description="Operate cowrieprocessor's database: pre-flight, snapshot backfill, "
        "status and verification.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_global_options(parser, None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        """A command that also takes the global options after its name."""
        made = commands.add_parser(name, **kwargs)
        _add_global_options(made, argparse.SUPPRESS)
        return made

    for register in REGISTERS:
        register(command)
    return parser


def _add_global_options(parser: argparse.ArgumentParser, default: Any) -> None:
    """``--db`` and ``--verbose``: on the main parser, and (``default=SUPPRESS``, so that
    they override only when given) on each command, after its name."""
    parser.add_argument(
        "--db",
        metavar="URL",
        default=default,
        help="database URL (default: $COWRIE_DB_URL, else the embedded SQLite)",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=default, help="more detail and logs"
    )
