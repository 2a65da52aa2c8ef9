"""``main``, the entry point of ``cowrie-db``: parse, set up logging, run the command,
and turn what it raises into one line on stderr and an exit status (0 success, 1 a
check failed, 2 bad usage or an unusable database, 130 interrupted); a closed stdout
pipe ends quietly."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from sqlalchemy.exc import DBAPIError, OperationalError

from cowrieprocessor.backfill import KnobError, control
from cowrieprocessor.backfill.errors import driver_detail
from cowrieprocessor.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    CliError,
)
from cowrieprocessor.cli.parser import build_parser
from cowrieprocessor.db.integrity import UnusableDatabase, as_unusable
from cowrieprocessor.errors import CowrieError, IncompatibleSchema
from cowrieprocessor.settings import (
    SettingsError,
    mask_secrets,
    parse_url,
    resolve_database_url,
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s [%(levelname)8s] %(name)s: %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        stream=sys.stderr,
    )
    if not args.verbose:
        logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        code: int = args.func(args, sys.stdout)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return code
    except BrokenPipeError:
        # The reader went away (`cowrie-db check | head -1`): stop quietly, as Python's
        # documentation recommends (stdout to devnull, so the exit's flush cannot fail).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED
    except KeyboardInterrupt:  # backfill, clear and upgrade say how to resume themselves
        sys.stderr.write(f"\ncowrie-db {args.command}: interrupted (Ctrl-C)\n")
        return EXIT_INTERRUPTED
    except control.NoJobRunning as exc:
        sys.stderr.write(f"cowrie-db {args.command}: {exc}\n")
        return EXIT_FAILED
    except (CliError, KnobError, SettingsError, CowrieError) as exc:
        sys.stderr.write(f"cowrie-db {args.command}: error: {mask_secrets(str(exc))}\n")
        usage = isinstance(
            exc, CliError | KnobError | SettingsError | IncompatibleSchema | UnusableDatabase
        )
        return EXIT_USAGE if usage else EXIT_FAILED
    except DBAPIError as exc:
        # A damaged page found by a read (status, verify) is named as the check names it.
        unusable = as_unusable(_sqlite_file(args), exc)
        if unusable is not None:
            sys.stderr.write(f"cowrie-db {args.command}: error: {unusable}\n")
            return EXIT_USAGE
        if not isinstance(exc, OperationalError):
            raise  # a bug, not the operator's input: keep the traceback
        detail = driver_detail(exc)
        sys.stderr.write(f"cowrie-db {args.command}: database error: {detail}\n")
        return EXIT_USAGE


def _sqlite_file(args: argparse.Namespace) -> str:
    """The SQLite file the command used ('' for another dialect, or before one was chosen)."""
    try:
        url = parse_url(resolve_database_url(args.db))
    except SettingsError:
        return ""
    return str(url.database or "") if url.get_backend_name() == "sqlite" else ""
