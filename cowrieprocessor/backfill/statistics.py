"""Statistics before the first batch (PostgreSQL): the planner must not plan blind.

Each batch's statement is planned from the statistics of the tables it reads: the
sessions (each leaf, on a partitioned table) and ``ip_inventory``. A table never
analyzed, or changed by more rows since its last ``ANALYZE`` than that ``ANALYZE``
counted (a database just restored, or bulk-loaded before autovacuum came round), gives
plans many times slower (:mod:`.sql.statistics` has the figure). Before the first
batch such a table is analyzed, with one line saying why and how long it took.

``ANALYZE`` takes a SHARE UPDATE EXCLUSIVE lock, which reads and writes do not wait
for; it waits at most the ``lock_timeout`` knob (autovacuum or DDL on the table), and a
table that cannot be analyzed then, or that this role may not analyze (PostgreSQL would
skip it with a mere warning), is left as it is, with a warning naming it: statistics
make the batches faster, never correct. A dry run writes nothing, so it only says what a run
would analyze.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from cowrieprocessor.backfill import sql
from cowrieprocessor.backfill.errors import driver_detail
from cowrieprocessor.backfill.run import Run
from cowrieprocessor.backfill.transactions import Transactions

log = logging.getLogger("cowrieprocessor.backfill")


def blind_tables(tx: Transactions, run: Run) -> list[tuple[str, str, str, bool]]:
    """(schema, table, why, may this role ANALYZE it) of each table a batch reads whose
    statistics are missing or describe less than half of it now."""
    tables = [
        *(run.leaves if run.leaves is not None else [sql.SESSIONS_TABLE]),
        sql.INVENTORY_TABLE,
    ]

    def read(conn: Connection) -> list[tuple[str, str, str, bool]]:
        rows = conn.execute(sql.TABLE_STATISTICS, {"tables": tables}).all()
        conn.rollback()
        found = []
        for schema, name, counted, changed, never, allowed in rows:
            if never:
                found.append((schema, name, "never analyzed", bool(allowed)))
            elif changed > max(counted, 0):
                why = (
                    f"{changed} rows changed since its last ANALYZE counted {max(int(counted), 0)}"
                )
                found.append((schema, name, why, bool(allowed)))
        return found

    result: list[tuple[str, str, str, bool]] = tx.retrying("reading the tables' statistics", read)
    return result


def analyze_blind_tables(tx: Transactions, run: Run) -> None:
    """ANALYZE each table :func:`blind_tables` finds (PostgreSQL; a dry run only says so)."""
    if tx.dialect != "postgresql":
        return
    for schema, name, why, allowed in blind_tables(tx, run):
        if not allowed:
            log.warning(
                "%s.%s: %s, and this role may not ANALYZE it (its owner, a superuser or "
                "pg_maintain may): each batch is planned without statistics, many times "
                "slower; ask its owner to run ANALYZE %s.%s",
                schema,
                name,
                why,
                schema,
                name,
            )
            continue
        if run.dry_run:
            log.warning(
                "%s.%s: %s; a run will ANALYZE it before its first batch (a dry run "
                "writes nothing, so its batches here are planned without statistics)",
                schema,
                name,
                why,
            )
            continue
        conn = tx.connection()
        started = time.monotonic()
        try:
            with conn.begin():
                conn.execute(sql.ANALYZE_LOCK_TIMEOUT, {"ms": str(run.knobs.lock_timeout)})
                conn.exec_driver_sql(sql.analyze(conn.dialect, schema, name))
        except DBAPIError as exc:
            log.warning(
                "%s.%s: %s, and ANALYZE failed (%s): its batches are planned from the "
                "statistics it has",
                schema,
                name,
                why,
                driver_detail(exc),
            )
            continue
        log.info(
            "%s.%s: %s; analyzed before the first batch in %.1f s (without statistics "
            "each batch is planned blind)",
            schema,
            name,
            why,
            time.monotonic() - started,
        )
