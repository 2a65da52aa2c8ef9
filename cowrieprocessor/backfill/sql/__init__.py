"""The backfill's SQL, both dialects: the one place that composes SQL text.

**The package's namespace is its interface.** Callers import the package
(``from cowrieprocessor.backfill import sql``) and use ``sql.X``; every name below is
re-exported here, so a statement can move between the modules without any caller
changing. Import a module of the package directly only from inside it.

Where each statement lives:

* :mod:`.rules`: what the backfill writes, and to which rows (the mapping rules; the
  conditions ``NEEDS_SNAPSHOT``, ``CATCHUP_NEEDS``, ``HAS_SOURCE_IP``, ``HAS_SNAPSHOT``,
  each defined once; ``WOULD_CHANGE``, ``SET_NULL_ONLY``, the IP sources);
* :mod:`.walk`: the table, a range of keys, the next bound, a batch's settings, counts;
* :mod:`.resolve_pg`: PostgreSQL, one range in one statement joined back by ``ctid``;
* :mod:`.resolve_pg_key`: PostgreSQL joined back by key (Citus, ``join_back=key``);
* :mod:`.resolve_sqlite`: SQLite, one range through a temp table, joined back by rowid;
* :mod:`.record`: the rollback record (its table, each batch's row, the undo);
* :mod:`.clear`: NULL the five columns in a range (``clear --all``);
* :mod:`.offline`: what ``alembic upgrade/downgrade --sql`` prints;
* :mod:`.reports`: what ``cowrie-db check``, ``status`` and ``verify`` read;
* :mod:`.statistics`: whether the planner has statistics of the tables a batch reads;
  the offline script's ``ANALYZE``;
* :mod:`.blocks`: the walk by table blocks (its plan, range, and catch-up);
* :mod:`.stripes`: the quantiles of ``session_id`` that the workers' stripes start at.

Every statement is fixed SQL text with bound parameters (``:lo``, ``:hi``,
timeouts). What varies is chosen from fixed fragments written in these modules: the
*shape* of a range predicate (a missing bound), a table's name read from the catalog
(:func:`.walk.in_text`), the JSON column types (:mod:`cowrieprocessor.backfill.json_storage`),
never a value. Ruff's S608 cannot tell such a fragment from a value, so pyproject.toml
turns it off for this package, and its f-strings are reviewed here by hand.

The modules import only SQLAlchemy, :mod:`~cowrieprocessor.backfill.json_storage`,
:mod:`~cowrieprocessor.backfill.progress` (its table's name and columns) and each
other, in one direction: rules, walk and record at the bottom, statistics and stripes
on walk, the ``resolve_*`` modules on them, then clear, offline and reports.
"""

from __future__ import annotations

from cowrieprocessor.backfill.sql.blocks import (
    BLOCK_FILENODE,
    BLOCK_PLAN,
    BLOCK_RANGE,
    MOVED_CATCHUP_NEEDS,
    NOT_HOT_INDEXES,
    WRITTEN_BEFORE,
    lock_row_exclusive,
)
from cowrieprocessor.backfill.sql.clear import null_snapshots_in_range
from cowrieprocessor.backfill.sql.offline import (
    offline_backfill,
    offline_undo,
    offline_unwrite,
    pg_offline_backfill,
    sqlite_offline_backfill,
)
from cowrieprocessor.backfill.sql.record import (
    COUNT_RECORDED,
    DELETE_RECORD,
    DELETE_RECORDS,
    OLDEST_RECORD,
    PG_HAS_LZ4,
    PG_RECORD_CTE,
    PG_RECORD_DDL,
    PG_RECORD_INSERT,
    PG_RECORD_MARKER,
    PG_RECORD_VALUES,
    RECORD_ARRAYS,
    RECORD_HAS_JOB,
    RECORD_TABLE,
    SET_UNDONE,
    SQLITE_RECORD,
    SQLITE_RECORD_DDL,
    SQLITE_RECORD_MARKER,
    STILL_WRITTEN,
    UNWRITE,
    WRITTEN,
    drop_record,
    pg_record_storage,
    unwrite,
)
from cowrieprocessor.backfill.sql.reports import (
    ASN_DIVERGENT,
    COUNT_WITH_SNAPSHOT,
    COUNT_WITH_VALUES,
    COUNTRY_DIVERGENT,
    LEAF_COUNTS,
    LEAF_ESTIMATES,
    PG_CONSTRAINTS,
    PG_RUNBOOK_PLAN,
    PG_SERVER_VERSION,
    RUN_COLUMNS,
    RUNBOOK_QUERY,
    SNAPSHOT_SAMPLE,
    SQLITE_RUNBOOK_PLAN,
    SQLITE_SERVER_VERSION,
    SQLITE_TABLE_SQL,
)
from cowrieprocessor.backfill.sql.resolve_pg import (
    JOIN_BACK,
    PG_COUNTS,
    PG_SOURCE_COUNTS,
    pg_backfill,
    pg_dry_run,
    pg_resolve,
)
from cowrieprocessor.backfill.sql.resolve_pg_key import (
    UNCHANGED,
    pg_key_counts,
    pg_key_update,
    pg_resolve_flat,
)
from cowrieprocessor.backfill.sql.resolve_sqlite import (
    SQLITE_BATCH_CLEAR,
    SQLITE_BATCH_TABLE,
    SQLITE_COUNTS,
    SQLITE_UPDATE,
    SQLITE_WOULD_UPDATE,
    sqlite_resolve,
)
from cowrieprocessor.backfill.sql.rules import (
    CATCHUP_NEEDS,
    HAS_SNAPSHOT,
    HAS_SOURCE_IP,
    IP_SOURCES,
    NEEDS_SNAPSHOT,
    SET_NULL_ONLY,
    SNAPSHOT_COLUMNS,
    SPUR_PRIORITY,
    WOULD_CHANGE,
    WOULD_CHANGE_READ,
)
from cowrieprocessor.backfill.sql.statistics import (
    ANALYZE_LOCK_TIMEOUT,
    OFFLINE_ANALYZE,
    TABLE_STATISTICS,
    analyze,
)
from cowrieprocessor.backfill.sql.stripes import ESTIMATED_ROWS, HISTOGRAM_BOUNDS, sample_keys
from cowrieprocessor.backfill.sql.walk import (
    COUNT_INVENTORY,
    COUNT_NEEDING,
    COUNT_SESSIONS,
    INVENTORY_TABLE,
    PG_SET_TIMEOUTS,
    ROWID_OF,
    SESSIONS_TABLE,
    catchup_keys_query,
    count_range,
    in_text,
    next_bound,
    next_rowid_bound,
    range_predicate,
)

__all__ = [
    "ANALYZE_LOCK_TIMEOUT",
    "ASN_DIVERGENT",
    "BLOCK_FILENODE",
    "BLOCK_PLAN",
    "BLOCK_RANGE",
    "CATCHUP_NEEDS",
    "COUNTRY_DIVERGENT",
    "COUNT_INVENTORY",
    "COUNT_NEEDING",
    "COUNT_RECORDED",
    "COUNT_SESSIONS",
    "COUNT_WITH_SNAPSHOT",
    "COUNT_WITH_VALUES",
    "DELETE_RECORD",
    "DELETE_RECORDS",
    "ESTIMATED_ROWS",
    "HAS_SNAPSHOT",
    "HAS_SOURCE_IP",
    "HISTOGRAM_BOUNDS",
    "INVENTORY_TABLE",
    "IP_SOURCES",
    "JOIN_BACK",
    "LEAF_COUNTS",
    "LEAF_ESTIMATES",
    "MOVED_CATCHUP_NEEDS",
    "NEEDS_SNAPSHOT",
    "NOT_HOT_INDEXES",
    "OFFLINE_ANALYZE",
    "OLDEST_RECORD",
    "PG_CONSTRAINTS",
    "PG_COUNTS",
    "PG_HAS_LZ4",
    "PG_RECORD_CTE",
    "PG_RECORD_DDL",
    "PG_RECORD_INSERT",
    "PG_RECORD_MARKER",
    "PG_RECORD_VALUES",
    "PG_RUNBOOK_PLAN",
    "PG_SERVER_VERSION",
    "PG_SET_TIMEOUTS",
    "PG_SOURCE_COUNTS",
    "RECORD_ARRAYS",
    "RECORD_HAS_JOB",
    "RECORD_TABLE",
    "ROWID_OF",
    "RUNBOOK_QUERY",
    "RUN_COLUMNS",
    "SESSIONS_TABLE",
    "SET_NULL_ONLY",
    "SET_UNDONE",
    "SNAPSHOT_COLUMNS",
    "SNAPSHOT_SAMPLE",
    "SPUR_PRIORITY",
    "SQLITE_BATCH_CLEAR",
    "SQLITE_BATCH_TABLE",
    "SQLITE_COUNTS",
    "SQLITE_RECORD",
    "SQLITE_RECORD_DDL",
    "SQLITE_RECORD_MARKER",
    "SQLITE_RUNBOOK_PLAN",
    "SQLITE_SERVER_VERSION",
    "SQLITE_TABLE_SQL",
    "SQLITE_UPDATE",
    "SQLITE_WOULD_UPDATE",
    "STILL_WRITTEN",
    "TABLE_STATISTICS",
    "UNCHANGED",
    "UNWRITE",
    "WOULD_CHANGE",
    "WOULD_CHANGE_READ",
    "WRITTEN",
    "WRITTEN_BEFORE",
    "analyze",
    "catchup_keys_query",
    "count_range",
    "drop_record",
    "in_text",
    "lock_row_exclusive",
    "next_bound",
    "next_rowid_bound",
    "null_snapshots_in_range",
    "offline_backfill",
    "offline_undo",
    "offline_unwrite",
    "pg_backfill",
    "pg_dry_run",
    "pg_key_counts",
    "pg_key_update",
    "pg_offline_backfill",
    "pg_record_storage",
    "pg_resolve",
    "pg_resolve_flat",
    "range_predicate",
    "sample_keys",
    "sqlite_offline_backfill",
    "sqlite_resolve",
    "unwrite",
]
