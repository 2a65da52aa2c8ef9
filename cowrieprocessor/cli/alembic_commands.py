"""``cowrie-db upgrade | downgrade | current | history``: Alembic's own commands on the
migrations this package ships (:mod:`cowrieprocessor.migrate`), so an installed wheel
deploys a database without a checkout; in a checkout they are exactly ``alembic ...``
there. The database is checked first (it answers, the file is sound, its revision is
one this package knows), and the knobs are validated before any revision runs."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from typing import TextIO

from alembic import command as alembic_command
from alembic.config import Config
from alembic.util import CommandError

from cowrieprocessor import migrate, report
from cowrieprocessor.backfill import BackfillInterrupted
from cowrieprocessor.cli.common import (
    EXIT_OK,
    AddCommand,
    CliError,
    connect,
    database_url,
    interrupted,
    log,
)
from cowrieprocessor.cli.knob_flags import add_knob_flags, knob_x_args
from cowrieprocessor.db.engine import create_engine_from_url
from cowrieprocessor.db.integrity import require_usable_sqlite
from cowrieprocessor.settings import mask_secrets

# Alembic's command, and whether it may create the database (a SQLite file), by name.
ALEMBIC_COMMANDS: dict[str, tuple[Callable[[Config, argparse.Namespace], None], bool]] = {
    "upgrade": (lambda cfg, a: alembic_command.upgrade(cfg, a.revision, sql=a.sql), True),
    "downgrade": (lambda cfg, a: alembic_command.downgrade(cfg, a.revision, sql=a.sql), False),
    "current": (lambda cfg, a: alembic_command.current(cfg, verbose=a.verbose), False),
    "history": (
        lambda cfg, a: alembic_command.history(cfg, verbose=a.verbose, indicate_current=True),
        False,
    ),
}


def register(command: AddCommand) -> None:
    def migration_options(made: argparse.ArgumentParser) -> None:
        made.add_argument("--sql", action="store_true", help="print the SQL, run nothing")
        add_knob_flags(made)

    up = command(
        "upgrade",
        help="apply the migrations this package ships (alembic upgrade), head by default",
    )
    up.add_argument("revision", nargs="?", default="head", help="target (default: head)")
    migration_options(up)
    up.set_defaults(func=cmd_alembic)

    down = command("downgrade", help="revert to REVISION (alembic downgrade), e.g. 0002")
    down.add_argument("revision", help="target revision, e.g. 0002_snapshot_columns, or base")
    migration_options(down)
    down.set_defaults(func=cmd_alembic)

    cur = command("current", help="the database's revision (alembic current)")
    cur.set_defaults(func=cmd_alembic)

    hist = command("history", help="the revisions this package ships, the current one marked")
    hist.set_defaults(func=cmd_alembic)


def cmd_alembic(args: argparse.Namespace, out: TextIO) -> int:
    """``upgrade``, ``downgrade``, ``current``, ``history``: Alembic's own command."""
    action, may_create = ALEMBIC_COMMANDS[args.command]
    x = knob_x_args(args) if hasattr(args, "x") else []
    url = database_url(args, may_create=may_create)
    if args.command != "history" and not getattr(args, "sql", False):
        _require_migratable(url, args.masked_url, writes=args.command != "current")
    cfg = migrate.alembic_config(url, x)
    # env.py may skip its own quick_check: this process just ran it on this file.
    cfg.attributes["sqlite_integrity_checked"] = True
    cfg.stdout = out
    cfg.output_buffer = out  # --sql
    if not getattr(args, "sql", False):
        log.info("Database: %s; migrations: %s", args.masked_url, migrate.script_location())
    logging.getLogger("alembic").setLevel(logging.INFO)
    try:
        action(cfg, args)
    except (BackfillInterrupted, KeyboardInterrupt) as exc:
        return interrupted(exc, "the same command", out)
    except CommandError as exc:
        raise CliError(mask_secrets(str(exc))) from exc
    return EXIT_OK


def _require_migratable(url: str, masked: str, *, writes: bool) -> None:
    """Before Alembic runs: the server answers, the file is a sound database (when the
    command writes), and its revision is one this package knows (a newer release's
    database is refused in our words, not as Alembic's "Can't locate revision")."""
    engine = create_engine_from_url(url, application_name="cowrie-db")
    try:
        with connect(engine, masked) as conn:
            if writes:
                require_usable_sqlite(conn)
            report.current_revisions(conn)
    finally:
        engine.dispose()
