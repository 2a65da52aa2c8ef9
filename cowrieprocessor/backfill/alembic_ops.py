"""What a revision needs from the backfill: the batch engine, and the knobs.

Batches run on their own connections, not on Alembic's, so that a lost connection can
be replaced and the batch retried; Alembic's connection, idle meanwhile, stamps the
revision at the end. :func:`batch_engine` gives a revision that engine, inside
``autocommit_block()`` (each batch commits on its own, not in the migration's
transaction), and disposes of it afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from alembic import context, op
from sqlalchemy import Connection, Engine

from cowrieprocessor.backfill.errors import BackfillError
from cowrieprocessor.backfill.knobs import BackfillKnobs
from cowrieprocessor.db.engine import create_engine_from_url, is_sqlite_memory

# How the batch connections show up in pg_stat_activity.
BATCH_APPLICATION_NAME = "cowrie-backfill"


def migration_knobs() -> BackfillKnobs:
    """The knobs of this ``alembic`` run: ``-x name=value``, then the environment.

    Raises :class:`~cowrieprocessor.backfill.knobs.KnobError` naming a bad one,
    before anything is written."""
    return BackfillKnobs.from_sources(context.get_x_argument(as_dictionary=True), os.environ)


@contextmanager
def batch_engine(knobs: BackfillKnobs) -> Iterator[Engine]:
    """The batch engine on the migration's database, inside ``autocommit_block()``."""
    engine = engine_for_bind(op.get_bind(), knobs)
    try:
        with op.get_context().autocommit_block():
            yield engine
    finally:
        engine.dispose()


def engine_for_bind(bind: Connection, knobs: BackfillKnobs) -> Engine:
    """A separate engine on the migration's database, for the batches' own connections.

    Batches run on their own connections so that a lost connection can be replaced
    and retried; Alembic's connection, idle meanwhile, stamps the revision at the end.
    """
    url = bind.engine.url
    if is_sqlite_memory(url):
        raise BackfillError(
            "the backfill needs a database file or server; an in-memory SQLite "
            "database cannot be shared with the batch connections"
        )
    return create_engine_from_url(
        url,
        application_name=BATCH_APPLICATION_NAME,
        sqlite_busy_timeout_ms=knobs.lock_timeout,
        # the job's connection, and one per worker (:mod:`.workers`); one spare
        pool_size=knobs.workers + 1,
        max_overflow=1,
    )
