"""The walk by table blocks (:mod:`cowrieprocessor.backfill.blocks`): its plan, its
range, and the catch-up's look at the rows that moved while it walked.

Fixed SQL text; every value is bound (the table's name as ``:table``, cast to
``regclass`` by the server, so the name is never part of the text).
"""

from __future__ import annotations

from sqlalchemy import text

from cowrieprocessor.backfill.sql.record import RECORD_TABLE
from cowrieprocessor.backfill.sql.rules import CATCHUP_NEEDS, NEEDS_SNAPSHOT

# The table's file, its blocks now, the planner's rows and pages, and the oldest
# transaction still running (its 32-bit xid): any row version written from here on
# carries an xmin at least this new.
BLOCK_PLAN = text(
    "SELECT pg_relation_filenode(CAST(:table AS regclass)) AS filenode, "
    "pg_relation_size(CAST(:table AS regclass)) "
    "/ current_setting('block_size')::bigint AS blocks, "
    "c.reltuples AS tuples, c.relpages AS pages, "
    "(pg_snapshot_xmin(pg_current_snapshot())::text::bigint % 4294967296) AS since "
    "FROM pg_class c WHERE c.oid = CAST(:table AS regclass)"
)

# The table's indexes that have one of :columns (the columns the backfill writes) among
# their own columns, key or INCLUDE, and are maintained by its updates: an update that
# changes such a column is never HOT. BRIN indexes (PostgreSQL 16 lets their columns
# change in a HOT update) and columns read only by an index's expression or predicate
# are not counted, so where they alone read a snapshot column the walk keeps the rounds
# of a table whose updates may be HOT.
NOT_HOT_INDEXES = text(
    "SELECT c.relname FROM pg_index i "
    "JOIN pg_class c ON c.oid = i.indexrelid "
    "JOIN pg_am am ON am.oid = c.relam "
    "WHERE i.indrelid = CAST(:table AS regclass) AND i.indisready AND am.amname <> 'brin' "
    "AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = i.indrelid "
    "AND a.attnum = ANY (i.indkey) AND a.attname = ANY (:columns)) "
    "ORDER BY c.relname"
)

# Inside a batch's transaction, before its statement: the lock its UPDATE takes anyway,
# taken first, so that no rewrite of the table (VACUUM FULL, CLUSTER) can come between
# this read of its file and the UPDATE; then the file the plan's blocks refer to.
BLOCK_FILENODE = text("SELECT pg_relation_filenode(CAST(:table AS regclass))")


def lock_row_exclusive(quoted_table: str) -> str:
    """``LOCK TABLE`` in the mode an UPDATE takes; the name quoted by the caller's dialect."""
    return f"LOCK TABLE {quoted_table} IN ROW EXCLUSIVE MODE"


# One batch: the rows in blocks [:blo, :bhi) whose session falls in round :round of
# :mask + 1 (a TID Range Scan, PostgreSQL 14+).
BLOCK_RANGE = (
    "s.ctid >= CAST(:blo AS tid) AND s.ctid < CAST(:bhi AS tid) "
    "AND (hashtext(s.session_id) & :mask) = :round"
)

# The walk by blocks leaves the rows written since it began to its catch-up: a row its
# own batch moved to a block it reaches later is not looked at twice, and one another
# writer moved is looked at once, there.
WRITTEN_BEFORE = " AND age(s.xmin) > age(CAST(:since AS xid))"

# The catch-up after a walk by blocks: the sessions without source_ip (as after a walk
# by key), and those still lacking a snapshot column that a transaction wrote since the
# walk began (:since, an xid) and that no batch of the backfill wrote (the rollback
# record's rows carry their batch's xid): rows another writer moved to a block the walk
# had passed, or left before a block it had not reached. Ages, not xids, are compared:
# xids wrap around, ages of the same moment do not.
MOVED_CATCHUP_NEEDS = (
    f"({CATCHUP_NEEDS} OR ({NEEDS_SNAPSHOT} "
    "AND age(s.xmin) <= age(CAST(:since AS xid)) "
    f"AND NOT EXISTS (SELECT 1 FROM {RECORD_TABLE} w WHERE w.xmin = s.xmin)))"
)
