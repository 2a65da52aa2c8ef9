"""What every ``cowrie-db`` command shares: the database it names (its URL, an engine,
a connection that fails in one line), printing (JSON, durations), the exit statuses,
the one operator-facing error, and Ctrl-C (stop after the batch, then abort)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from cowrieprocessor.db.engine import create_engine_from_url
from cowrieprocessor.deploy_errors import cannot_connect
from cowrieprocessor.settings import (
    ENV_URL,
    mask_url,
    parse_url,
    resolve_database_url,
)

# One logger for every command module: its name is in each log line operators see.
log = logging.getLogger("cowrieprocessor.cli")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
STATUS_FILE_NAME = "snapshot_backfill.json"

# ``command(name, help=...)``: a command's subparser, which also takes the global
# options after its name (cli/parser.py hands it to each module's ``register``).
AddCommand = Callable[..., argparse.ArgumentParser]


class CliError(Exception):
    """An operator-facing error: printed as one line, exit status 2."""


def database_url(args: argparse.Namespace, *, may_create: bool = False) -> str:
    """The URL to use (``args.masked_url`` set for printing). A SQLite path the operator
    typed must exist, unless the command creates databases (``upgrade``): a typo must not
    create a database (and its folders) that then looks empty. The embedded default may
    not exist yet."""
    url = resolve_database_url(args.db, option=getattr(args, "db_option", "--db"))
    args.masked_url = mask_url(url)
    given = args.db or os.environ.get(ENV_URL)
    parsed = parse_url(url)
    if given and not may_create and parsed.get_backend_name() == "sqlite" and parsed.database:
        path = Path(parsed.database).expanduser()
        plain_file = not parsed.database.startswith("file:") and parsed.database != ":memory:"
        if plain_file and not path.exists():
            raise CliError(
                f"SQLite database {args.masked_url} does not exist (check the path; "
                "`cowrie-db upgrade` creates a new one)"
            )
    return url


def open_engine(args: argparse.Namespace, **kwargs: Any) -> sa.Engine:
    """The engine of the database the command names (``args.masked_url`` set)."""
    return create_engine_from_url(database_url(args), application_name="cowrie-db", **kwargs)


def connect(engine: sa.Engine, masked: str) -> sa.Connection:
    try:
        return engine.connect()
    except (DBAPIError, OSError) as exc:
        # the same line as alembic's, with the same hint for each cause
        raise CliError(str(cannot_connect(masked, exc, "--db URL or COWRIE_DB_URL"))) from exc


def print_json(data: Any, out: TextIO) -> None:
    out.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"


@contextmanager
def ctrl_c_stops() -> Iterator[threading.Event]:
    """First Ctrl-C: set the event (stop after the current batch); second: abort it.

    The handler runs in the main thread between two bytecodes, possibly while the
    walker's ``stop.wait()`` holds the event's own lock (entering or leaving the wait):
    ``stop.set()`` there would wait for that lock forever and hang the command. So the
    handler takes no lock: it counts the Ctrl-C itself, and a thread sets the event
    (tests/test_ctrl_c_handler.py)."""
    stop = threading.Event()
    previous = signal.getsignal(signal.SIGINT)
    asked = False

    def on_sigint(_signum: int, _frame: FrameType | None) -> None:
        nonlocal asked
        if asked:  # a second Ctrl-C: stop now (the open batch rolls back)
            raise KeyboardInterrupt
        asked = True
        threading.Thread(target=stop.set, name="ctrl-c", daemon=True).start()
        sys.stderr.write("\nCtrl-C: stopping after the current batch (again to abort it)\n")

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def interrupted(exc: BaseException, resume: str, out: TextIO) -> int:
    """A job stopped by Ctrl-C (or aborted by a second one): say so, and how to resume."""
    if isinstance(exc, KeyboardInterrupt):
        out.write("Aborted: the open batch was rolled back; rerun to resume.\n")
    else:
        out.write(f"Interrupted: {exc}\nResume with {resume}; committed batches are kept.\n")
    return EXIT_INTERRUPTED
