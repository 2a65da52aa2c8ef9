"""Walking the key space: the table, a range of keys, the next bound, the counts.

Ranges are of ``session_id`` (both dialects) or, on SQLite, of ``rowid``: the table's
physical order, so that a batch reads and rewrites neighbouring pages instead of
rows scattered over the whole file (session ids are random). The only text that varies
in a range statement is the *shape* of its predicate (no lower bound on the first
range, no upper bound on the last), picked from fixed fragments, never a value.
"""

# Fixed fragments joined with f-strings, every value bound: see the package docstring.

from __future__ import annotations

from sqlalchemy import TextClause, text

from cowrieprocessor.backfill.sql.rules import CATCHUP_NEEDS, NEEDS_SNAPSHOT

SESSIONS_TABLE = "session_summaries"
INVENTORY_TABLE = "ip_inventory"


def range_predicate(has_lo: bool, has_hi: bool, column: str = "s.session_id") -> str:
    """``lo < key <= hi``, leaving out a missing bound (first / last range)."""
    parts = []
    if has_lo:
        parts.append(f"{column} > :lo")
    if has_hi:
        parts.append(f"{column} <= :hi")
    return " AND ".join(parts) or "TRUE"


# --- a table's name in a statement ---------------------------------------------------


def in_text(table: str) -> str:
    """A table's name for the package's ``text()`` statements: ``session_summaries``, or a
    partition as PostgreSQL prints its regclass (quoted by ``quote_ident`` where it needs
    it). Its ``:`` is escaped, or ``text()`` would read ``":x"`` as a bind parameter; the
    quotes around such a name are PostgreSQL's, so the name stays one identifier."""
    return table.replace(":", "\\:")


# --- walking the key space ---------------------------------------------------------


def next_bound(has_lo: bool, table: str = SESSIONS_TABLE, has_upper: bool = False) -> TextClause:
    """The key ``:n`` places after ``:lo``: the inclusive upper bound of the next range;
    with ``has_upper``, only keys up to ``:upper`` count (a worker's stripe ends there).

    An index-only walk of ``:n`` entries of the primary key starting at the previous
    bound; never an OFFSET from the start of the table.
    """
    bounds = [("session_id > :lo", has_lo), ("session_id <= :upper", has_upper)]
    where = " AND ".join(part for part, present in bounds if present)
    where = f"WHERE {where} " if where else ""
    return text(
        f"SELECT session_id FROM {in_text(table)} {where}ORDER BY session_id LIMIT 1 OFFSET :offset"
    )


def next_rowid_bound(has_lo: bool) -> TextClause:
    """SQLite: the ``rowid`` (and its session) ``:n`` rows after ``:lo``, in table order.

    A walk of the table's own b-tree from the previous bound; the session id comes
    along so that the position can be checked later (see ``ROWID_OF``).
    """
    where = "WHERE rowid > :lo " if has_lo else ""
    return text(
        f"SELECT rowid, session_id FROM {SESSIONS_TABLE} {where}"
        "ORDER BY rowid LIMIT 1 OFFSET :offset"
    )


# SQLite: where a session sits now. VACUUM may renumber the rowids of a table without an
# INTEGER PRIMARY KEY; a rowid position is trusted only while its session still has it.
ROWID_OF = text(f"SELECT rowid FROM {SESSIONS_TABLE} WHERE session_id = :sid")


def catchup_keys_query(
    has_lo: bool, table: str = SESSIONS_TABLE, needs: str = CATCHUP_NEEDS
) -> TextClause:
    """The keys of the sessions without ``source_ip`` after ``:lo``, at most ``:limit``,
    in the server's order: the catch-up's list, in one sequential scan and a sort.

    Sorted by ``session_id || ''``: the same order (the column's collation carries over
    to the expression), but one the primary key cannot give. Ordered by the column, the
    planner reads the whole table through the primary key whenever the statistics still
    expect many sessions without ``source_ip`` (an ANALYZE during the walk, autovacuum's),
    which takes longer (docs/performance.md, "Why the defaults", has the figures). A
    top-level ``ORDER BY ... LIMIT``, as before: Citus runs it on every shard and merges."""
    after = "AND s.session_id > :lo " if has_lo else ""
    return text(
        f"SELECT s.session_id FROM {in_text(table)} s WHERE {needs} {after}"
        "ORDER BY s.session_id || '' LIMIT :limit"
    )


def count_range(
    has_lo: bool, has_hi: bool, column: str = "s.session_id", table: str = SESSIONS_TABLE
) -> TextClause:
    return text(
        f"SELECT count(*) FROM {in_text(table)} s WHERE {range_predicate(has_lo, has_hi, column)}"
    )


# Per batch transaction. JIT off: a batch's estimated cost can cross jit_above_cost, and
# compiling its plan (tens to hundreds of ms) would cost more than running it.
# synchronous_commit off: a batch's commit does not wait for its WAL to reach the disk
# (or a synchronous standby). Nothing is lost that a rerun does not redo: a batch and its
# progress row commit atomically, so after a server crash that loses the last commits
# (at most 3 x wal_writer_delay) the progress row points before them, and the final
# stamp of the revision, a synchronous commit, flushes every batch's WAL before it.
PG_SET_TIMEOUTS = text(
    "SELECT set_config('lock_timeout', :lock_timeout, true), "
    "set_config('statement_timeout', :statement_timeout, true), "
    "set_config('jit', 'off', true), set_config('synchronous_commit', 'off', true)"
)

# --- counts for the start of a run ----------------------------------------------------

COUNT_SESSIONS = text(f"SELECT count(*) FROM {SESSIONS_TABLE}")
COUNT_NEEDING = text(f"SELECT count(*) FROM {SESSIONS_TABLE} s WHERE {NEEDS_SNAPSHOT}")
COUNT_INVENTORY = text(f"SELECT count(*) FROM {INVENTORY_TABLE}")
