"""The work of one range, per job, and the counts taken around a walk.

The backfill's statements for one range (:func:`backfill_range`: PostgreSQL joining
back by ``ctid`` or by key, SQLite through a batch table, each as a dry run too), the
clear's (:func:`clear_range`), which join-back a run uses (:func:`join_back_mode`), and
the counts the jobs and the reports take (sessions, inventory, what a backfill would
do). The statements themselves are in :mod:`.sql`; the jobs that walk with these are
in :mod:`.jobs`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Row

from cowrieprocessor.backfill import json_storage, sql
from cowrieprocessor.backfill.json_storage import JsonTypes
from cowrieprocessor.backfill.keys import SESSION_ID_ORDER, Range
from cowrieprocessor.backfill.knobs import BackfillKnobs
from cowrieprocessor.backfill.progress import WALK
from cowrieprocessor.backfill.run import BatchCounts
from cowrieprocessor.backfill.walker import RunRange
from cowrieprocessor.db import partitions

CTID, KEY = "ctid", "key"  # the join-back of a PostgreSQL batch (knob join_back)


def backfill_range(
    dialect: str,
    dry_run: bool,
    json: JsonTypes,
    record_as: str | None,
    join_back: str = CTID,
) -> RunRange:
    """The statement(s) of one backfill range, rendered for this database's JSON types,
    joining back by ``ctid`` or by key (:func:`join_back_mode`); what it writes goes to
    the rollback record under the job ``record_as`` (None: no record)."""
    keep_record = record_as is not None
    job = {"job": record_as}

    def resolved_by_source(row: Row[Any]) -> tuple[int, ...]:
        """How many sessions each of sql.IP_SOURCES resolved (columns src_1..src_4)."""
        return tuple(int(row._mapping[f"src_{n}"]) for n in range(1, len(sql.IP_SOURCES) + 1))

    def run_pg(conn: Connection, r: Range) -> BatchCounts:
        table = r.order.table
        if dry_run:
            stmt = sql.pg_dry_run(json, r.has_lo, r.has_hi, r.needs, table, r.predicate)
            row = conn.execute(stmt, r.params).one()
            by_source = resolved_by_source(row)
        else:
            stmt = sql.pg_backfill(
                json,
                r.has_lo,
                r.has_hi,
                r.needs,
                keep_record=keep_record,
                table=table,
                range_sql=r.predicate,
            )
            row = conn.execute(stmt, {**r.params, **job} if keep_record else r.params).one()
            by_source = ()
        updated = int(row.updated)
        meanwhile = max(0, int(row.would_change) - updated) if not dry_run else 0
        return BatchCounts(
            int(row.candidates), int(row.no_ip), int(row.matched), updated, by_source, meanwhile
        )

    def run_pg_by_key(conn: Connection, r: Range) -> BatchCounts:
        table = r.order.table
        counts = sql.pg_key_counts(json, r.has_lo, r.has_hi, r.needs, table)
        row = conn.execute(counts, r.params).one()
        updated = int(row.updated)
        by_source: tuple[int, ...] = ()
        if dry_run:
            by_source = resolved_by_source(row)
        else:
            stmt = sql.pg_key_update(json, r.has_lo, r.has_hi, r.needs, table)
            written = conn.execute(stmt, r.params).all()
            updated = len(written)
            if keep_record and written:
                # one bound array per record column, in WRITTEN's order
                columns = zip(*written, strict=True)
                values = dict(zip(sql.RECORD_ARRAYS, map(list, columns), strict=True))
                conn.execute(sql.PG_RECORD_VALUES, {**job, "n": len(written), **values})
        return BatchCounts(
            int(row.candidates), int(row.no_ip), int(row.matched), updated, by_source
        )

    def run_sqlite(conn: Connection, r: Range) -> BatchCounts:
        conn.execute(sql.SQLITE_BATCH_TABLE)
        conn.execute(sql.SQLITE_BATCH_CLEAR)
        conn.execute(sql.sqlite_resolve(r.has_lo, r.has_hi, r.order.column, r.needs), r.params)
        row = conn.execute(sql.SQLITE_COUNTS).one()
        if dry_run:
            updated = int(conn.execute(sql.SQLITE_WOULD_UPDATE).scalar_one())
        else:
            updated = conn.execute(sql.SQLITE_UPDATE).rowcount
            if keep_record and updated:
                conn.execute(sql.SQLITE_RECORD, job)
        conn.execute(sql.SQLITE_BATCH_CLEAR)
        by_source = resolved_by_source(row)
        return BatchCounts(
            int(row.candidates), int(row.no_ip), int(row.matched), updated, by_source
        )

    if dialect != "postgresql":
        return run_sqlite
    return run_pg_by_key if join_back == KEY else run_pg


def join_back_mode(conn: Connection, knobs: BackfillKnobs) -> str:
    """``ctid`` or ``key``: the knob, or when it says ``auto``, ``key`` where the citus
    extension is installed (Citus cannot use ctid across shards)."""
    if knobs.join_back != "auto":
        return knobs.join_back
    return KEY if partitions.has_citus(conn) else CTID


def dry_run_counts(conn: Connection, hi: str | None = None) -> BatchCounts:
    """The backfill's counts over ``session_id`` range (start, ``hi``] (the whole table
    when ``hi`` is None), written nowhere: what ``check`` and ``verify`` report."""
    json = json_storage.detect(conn)
    mode = join_back_mode(conn, BackfillKnobs())  # auto, as a run with no knob given
    run = backfill_range(conn.dialect.name, True, json, None, mode)
    return run(conn, Range(WALK, SESSION_ID_ORDER, None, hi))


def clear_range(conn: Connection, r: Range) -> BatchCounts:
    stmt = sql.null_snapshots_in_range(r.has_lo, r.has_hi, r.order.column, r.order.table)
    return BatchCounts(updated=conn.execute(stmt, r.params).rowcount)


def session_counts(conn: Connection) -> tuple[int, int, int]:
    """Sessions, sessions needing snapshots, inventory IPs (ends the read transaction).

    For the reports: counting the sessions that need snapshots reads the whole table
    (3.8 s at 1.68M sessions), so the jobs leave it out (:func:`table_counts`) and the
    walk counts them as it goes."""
    total, inventory = table_counts(conn)
    needing = int(conn.execute(sql.COUNT_NEEDING).scalar_one())
    conn.commit()
    return total, needing, inventory


def table_counts(conn: Connection) -> tuple[int, int]:
    """Sessions (an index-only count) and inventory IPs (ends the read transaction)."""
    total = int(conn.execute(sql.COUNT_SESSIONS).scalar_one())
    inventory = int(conn.execute(sql.COUNT_INVENTORY).scalar_one())
    conn.commit()
    return total, inventory
