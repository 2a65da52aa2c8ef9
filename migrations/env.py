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
"""

from __future__ import annotations

import logging
import os
from logging.config import fileConfig
from typing import Any

from alembic import context
from sqlalchemy import Connection, Engine, pool

from cowrieprocessor.backfill.knobs import BackfillKnobs
from cowrieprocessor.backfill.progress import PROGRESS_TABLE
from cowrieprocessor.backfill.record import RECORD_TABLE
from cowrieprocessor.db.engine import create_engine_from_url
from cowrieprocessor.db.ledger import LEDGER_TABLE
from cowrieprocessor.db.models import Base
from cowrieprocessor.settings import mask_url, parse_url, resolve_database_url

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

log = logging.getLogger("cowrieprocessor.migrations")
target_metadata = Base.metadata

# Tables that belong to the migrations' own bookkeeping (the backfill's progress, its
# rollback record, the ledger of what each revision created), not to the schema the
# models describe.
OPERATIONAL_TABLES = frozenset({PROGRESS_TABLE, RECORD_TABLE, LEDGER_TABLE})


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Keep the backfill's own bookkeeping table out of autogenerate comparisons."""
    return not (type_ == "table" and name in OPERATIONAL_TABLES)


def database_url() -> str:
    x_args = context.get_x_argument(as_dictionary=True)
    return resolve_database_url(x_args.get("db"))


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
    log.info("Database: %s", mask_url(url))
    # SQLite: the migration's own connection waits for the write lock as long as a batch
    # does (the lock_timeout knob), so a locked database fails a deploy in bounded time.
    knobs = BackfillKnobs.from_sources(context.get_x_argument(as_dictionary=True), os.environ)
    engine = create_engine_from_url(
        url,
        application_name="cowrieprocessor-alembic",
        poolclass=pool.NullPool,
        sqlite_busy_timeout_ms=knobs.lock_timeout,
    )
    try:
        with engine.connect() as connection:
            _run_with_connection(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
