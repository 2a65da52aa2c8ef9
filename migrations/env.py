"""Alembic environment for cowrieprocessor.

Where the database is, in one visible order (the first that is set wins):

1. a connection (or engine) handed in by a caller, ``config.attributes["connection"]``
   (tests and the CLI do this, so one connection serves the whole run);
2. ``alembic -x db=URL ...``;
3. the ``COWRIE_DB_URL`` environment variable;
4. the embedded default, a SQLite file at ``var/cowrie.sqlite`` in the project.

Steps 2-4 are :func:`cowrieprocessor.settings.resolve_database_url`, the same function
the ``cowrie-db`` CLI uses, so the two never disagree. URLs are only ever logged masked.

Each revision runs in its own transaction (``transaction_per_migration=True``): a
revision that fails leaves the ones before it committed and stamped, and the data
revision can commit batch by batch inside ``autocommit_block()`` without holding one
transaction open for the whole backfill.

Run by Alembic's own command line, a failure an operator can act on (a bad knob or URL,
a server that refuses us, an unknown revision) is one line and an exit status, and
Ctrl-C or SIGTERM says what was kept and how to resume
(:mod:`cowrieprocessor.deploy_errors`); ``--raiseerr`` gives the traceback instead.
Run in-process (``cowrie-db upgrade``, tests), the exceptions reach the caller as they are.
"""

from __future__ import annotations

import logging
import os
from logging.config import fileConfig
from typing import Any

import sqlalchemy as sa
from alembic import context
from sqlalchemy import Connection, Engine, pool

from cowrieprocessor import deploy_errors
from cowrieprocessor.backfill import progress
from cowrieprocessor.backfill.jobs import BACKFILL_JOB, CLEAR_JOB
from cowrieprocessor.backfill.knobs import BackfillKnobs
from cowrieprocessor.backfill.progress import DONE, PROGRESS_TABLE
from cowrieprocessor.backfill.rollback_record import RECORD_TABLE
from cowrieprocessor.db.engine import create_engine_from_url
from cowrieprocessor.db.integrity import require_usable_sqlite
from cowrieprocessor.db.ledger import LEDGER_TABLE
from cowrieprocessor.settings import (
    MaskedOutput,
    SettingsError,
    mask_url,
    parse_url,
    resolve_database_url,
)

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)
# Alembic prints some lines itself (`current -v`: "Current revision(s) for URL:") hiding
# only a userinfo password; a ?password= in the URL must not show either. (--sql output
# goes to output_buffer, not here: a reviewed script is shown exactly as it will run.)
if not isinstance(config.stdout, MaskedOutput):
    config.stdout = MaskedOutput(config.stdout)  # type: ignore[assignment]

log = logging.getLogger("cowrieprocessor.migrations")


# The commands that never compare the schema with the models: they run without
# target_metadata, and so without importing the models, which bring in SQLAlchemy's ORM
# (about 0.07 s of the 0.7 s each `alembic` process takes to start).
WITHOUT_MODELS = frozenset(
    {"upgrade", "downgrade", "current", "history", "heads", "branches", "show", "stamp"}
)


def _target_metadata() -> Any:
    """The models' metadata, for autogenerate, ``alembic check`` and whatever runs the
    migrations in-process (pytest-alembic compares them); None for the commands above."""
    cmd = getattr(config.cmd_opts, "cmd", None)
    if cmd and getattr(cmd[0], "__name__", "") in WITHOUT_MODELS:
        return None
    from cowrieprocessor.db.models import Base

    return Base.metadata


target_metadata = _target_metadata()

# Tables that belong to the migrations' own bookkeeping (the backfill's progress, its
# rollback record, the ledger of what each revision created), not to the schema the
# models describe.
OPERATIONAL_TABLES = frozenset({PROGRESS_TABLE, RECORD_TABLE, LEDGER_TABLE})
# Alembic's own (the default name), read after an interruption to say where the run stands.
VERSION_TABLE = sa.table("alembic_version", sa.column("version_num", sa.String))


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Keep the backfill's own bookkeeping table out of autogenerate comparisons."""
    return not (type_ == "table" and name in OPERATIONAL_TABLES)


def database_url() -> str:
    x_args = context.get_x_argument(as_dictionary=True)
    given = x_args.get("db")
    if given is not None and not given.strip():
        # `-x db=$URL` with $URL unset must not fall through to another database.
        raise SettingsError(
            "-x db= is empty (an unset variable?): give a URL, or leave -x db out to use "
            "COWRIE_DB_URL or the embedded default; nothing was changed"
        )
    return resolve_database_url(given)


def _configure_kwargs(dialect: str) -> dict[str, Any]:
    return {
        # Our SQLite engine runs real transactions (cowrieprocessor.db.engine), and
        # SQLite DDL is transactional: a failed revision leaves nothing half-done.
        "transactional_ddl": True if dialect in ("sqlite", "postgresql") else None,
        "target_metadata": target_metadata,
        "include_object": include_object,
        "transaction_per_migration": True,
        "compare_type": True,
        "compare_server_default": False,
    }


def run_migrations_offline() -> None:
    """Emit SQL to stdout (``alembic upgrade head --sql``) for a DBA to review.

    By skipping the Engine creation we don't even need a DBAPI to be available.
    """
    url = database_url()
    context.configure(
        url=url,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **_configure_kwargs(parse_url(url).get_backend_name()),
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_with_connection(connection: Connection) -> None:
    # A SQLite file that is not a database, or a damaged one, is refused before any
    # revision writes to it (PRAGMA quick_check; a no-op on PostgreSQL).
    require_usable_sqlite(connection)
    if connection.dialect.name == "sqlite":
        # A revision reads the catalog, then writes (DDL, the ledger). In a deferred
        # transaction a writer that commits in between turns that first write into an
        # immediate "database is locked"; BEGIN IMMEDIATE waits for the lock instead.
        connection = connection.execution_options(sqlite_begin="IMMEDIATE")
    context.configure(connection=connection, **_configure_kwargs(connection.dialect.name))
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    handed_in = config.attributes.get("connection")
    if isinstance(handed_in, Connection):
        _run_with_connection(handed_in)
        return
    if isinstance(handed_in, Engine):  # pytest-alembic hands in an Engine
        with handed_in.connect() as connection:
            _run_with_connection(connection)
        return
    url = parse_url(database_url())
    masked = mask_url(url)
    log.info("Database: %s", masked)
    # SQLite: the migration's own connection waits for the write lock as long as a batch
    # does (the lock_timeout knob), so a locked database fails a deploy in bounded time.
    knobs = BackfillKnobs.from_sources(context.get_x_argument(as_dictionary=True), os.environ)
    with deploy_errors.connecting(masked):  # a SQLite file's folder is created here
        engine = create_engine_from_url(
            url,
            application_name="cowrieprocessor-alembic",
            poolclass=pool.NullPool,
            sqlite_busy_timeout_ms=knobs.lock_timeout,
        )
    RUN.database, RUN.lock_timeout_ms = masked, knobs.lock_timeout
    try:
        with deploy_errors.connecting(masked):
            connection = engine.connect()
        # Only once the database answered: after a failure or an interruption these
        # read where it stands on a new connection (one that could not connect would
        # hang again).
        RUN.standing = lambda: _where_it_stands(engine)
        RUN.revisions = lambda: _revisions(engine)
        with connection:
            _run_with_connection(connection)
    finally:
        engine.dispose()


def _revisions(engine: Engine) -> tuple[str, ...]:
    """The revisions the database is stamped at, read on a fresh connection (after a
    failure or an interruption: the run's own connection was rolled back)."""
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(VERSION_TABLE.name):
            return ()
        found = tuple(str(v) for v in conn.scalars(sa.select(VERSION_TABLE.c.version_num)))
        conn.rollback()
    return found


def _where_it_stands(engine: Engine) -> str:
    """After an interruption: the revision the database is stamped at, and the batches
    of the backfill (or of its undo) that stay committed, read on a fresh connection."""
    job = CLEAR_JOB if RUN.command.startswith("alembic downgrade") else BACKFILL_JOB
    with engine.connect() as conn:
        state = progress.load(conn, job) if progress.has_table(conn) else None
        conn.rollback()
    at = ", ".join(_revisions(engine)) or "no revision"
    where = f"the database is at {at}; the running revision was rolled back, not stamped"
    if state is not None and state.phase != DONE and state.batches:
        what = "backfill" if job == BACKFILL_JOB else "undo of the backfill"
        where += (
            f"; the {what} keeps its {state.batches:,} committed batches "
            f"({state.sessions_walked:,} of {state.sessions_total:,} sessions walked)"
        )
    return where


def _command(cmd_opts: object) -> str:
    """The command to run again to resume, as the operator typed its revision."""
    name = getattr(getattr(cmd_opts, "cmd", (None,))[0], "__name__", "upgrade")
    revision = getattr(cmd_opts, "revision", None) or "head"
    return f"alembic {name} {revision}"


RUN = deploy_errors.Run()
migrate = run_migrations_offline if context.is_offline_mode() else run_migrations_online
if deploy_errors.from_alembic_cli(config.cmd_opts):
    RUN.command = _command(config.cmd_opts)
    RUN.head = context.script.get_current_head() or RUN.head
    deploy_errors.one_line_failures(
        migrate, RUN, raiseerr=bool(getattr(config.cmd_opts, "raiseerr", False))
    )
else:
    migrate()
