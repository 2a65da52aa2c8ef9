"""The two key orders a walk can follow, and the range one batch processes.

``session_id`` ranges on both dialects; on SQLite, adaptive batches walk ``rowid``
instead (the physical order): random session ids scatter every key range over the
whole file, so each SQLite commit would rewrite thousands of pages. A rowid position is
saved as ``#rowid:<rowid>:<session_id>`` and trusted only while that session still has
that rowid (VACUUM may renumber them); otherwise the phase restarts in ``session_id``
order, which is always safe since a range run twice changes nothing. A resumed phase
keeps the order it was started in.

The catch-up pass on PostgreSQL follows a third order (:class:`KeyListOrder`): the keys
of the sessions still without ``source_ip``, read in one scan when the pass starts,
instead of every range of the table again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from cowrieprocessor.backfill import sql
from cowrieprocessor.backfill.progress import CATCHUP

ROWID_KEY_PREFIX = "#rowid:"


class PositionLost(Exception):
    """A saved rowid no longer points at the session it was saved with (VACUUM)."""


class KeyOrder:
    """Ranges of ``session_id``: keys are the session ids themselves.

    ``table``: the table walked, ``session_summaries`` or one leaf of it when it is
    partitioned (:mod:`cowrieprocessor.db.partitions`): each leaf has its own ranges.
    ``upper``: the last key of the walk (a worker's stripe, :mod:`.workers`); None: the
    table's end. A range whose ``hi`` is None ends there.
    """

    name = "session_id"
    column = "s.session_id"

    def __init__(self, table: str = sql.SESSIONS_TABLE, upper: str | None = None) -> None:
        self.table = table
        self.upper = upper
        # a catch-up after a walk by blocks: the xid the walk began at (:mod:`.blocks`)
        self.moved_since: int | None = None

    def in_table(self, table: str) -> KeyOrder:
        """This order over another table (a leaf)."""
        return type(self)(table)

    def owns(self, key: str) -> bool:
        """Whether a saved position was written by this order."""
        return not key.startswith(ROWID_KEY_PREFIX)

    def bound_after(self, conn: Connection, lo: str | None, offset: int) -> str | None:
        params: dict[str, Any] = {"offset": offset}
        if lo is not None:
            params["lo"] = lo
        if self.upper is not None:
            params["upper"] = self.upper
        stmt = sql.next_bound(lo is not None, self.table, self.upper is not None)
        value = conn.execute(stmt, params).scalar()
        return None if value is None else str(value)

    def param(self, key: str) -> Any:
        return key

    def show(self, key: str) -> str:
        return repr(key)

    def still_valid(self, conn: Connection, lo: str | None) -> bool:
        return True

    def describe(self, lo: str | None, hi: str | None) -> str:
        hi = hi if hi is not None else self.upper
        left = "(start" if lo is None else f"({self.show(lo)}"
        right = "end)" if hi is None else f"{self.show(hi)}]"
        return f"{self.name} range {left}, {right}"

    def params(self, lo: str | None, hi: str | None) -> dict[str, Any]:
        hi = hi if hi is not None else self.upper
        params: dict[str, Any] = {}
        if lo is not None:
            params["lo"] = self.param(lo)
        if hi is not None:
            params["hi"] = self.param(hi)
        if self.moved_since is not None:
            params["since"] = str(self.moved_since)
        return params

    def range_sql(self, has_lo: bool, has_hi: bool) -> str:
        """The range's predicate, as a PostgreSQL batch statement takes it."""
        return sql.range_predicate(has_lo, has_hi, self.column)

    def catchup_needs(self) -> str:
        """Which sessions the catch-up looks at (:mod:`.sql.rules`; after a walk by
        blocks also those written since it began, :mod:`.blocks`)."""
        return sql.CATCHUP_NEEDS if self.moved_since is None else sql.MOVED_CATCHUP_NEEDS

    def has_hi(self, hi: str | None) -> bool:
        """Whether a range ending at ``hi`` has an upper bound (its own or the walk's)."""
        return hi is not None or self.upper is not None

    # the statement's extra predicate for this order ("" or " AND ..."), bound by params
    extra_predicate = ""

    def count(self, conn: Connection, lo: str | None, hi: str | None) -> int:
        """How many keys the range holds (to split one that timed out)."""
        stmt = sql.count_range(lo is not None, self.has_hi(hi), self.column, self.table)
        return int(conn.execute(stmt, self.params(lo, hi)).scalar_one())

    def sessions(self, keys: int) -> float:
        """How many of the phase's sessions ``keys`` keys of this order stand for."""
        return float(keys)

    # a batch whose rows another writer changed while it read them reads its range again
    # (RangeWalker._read_again); a walk by blocks leaves them to its catch-up
    reads_again = True

    def widened(self, lo: str | None, hi: str, most: int) -> str | None:
        """The range ``(lo, hi]`` that :meth:`bound_after` gave, perhaps taken further
        (up to ``most`` keys; None: to the end); as it is, unless the order says better."""
        return hi

    def held(self, lo: str | None, hi: str | None, asked: int) -> int:
        """How many keys the range ``(lo, hi]`` that :meth:`bound_after` gave for
        ``asked`` holds: all of them, unless the order ends a range early."""
        return asked


class KeyListOrder(KeyOrder):
    """PostgreSQL's catch-up: ranges over a list of keys read once, in one scan.

    The catch-up only looks at sessions without ``source_ip`` (the unmatched ones, and
    those inserted behind the walk); walking every range of the table again to find them
    read the whole table through the primary key (3-13 s at 1.68M sessions). Instead,
    one scan lists their keys when the pass starts (or resumes: keys after
    the saved position ``start``), and each batch takes the next keys of the list, with
    its range bounds as before and ``session_id = ANY(:keys)``. A position is a session
    id, as in :class:`KeyOrder`. Sessions inserted after the list was read are not seen,
    as they were not by a range the pass had passed.

    The list is in the server's order of ``session_id`` (its collation), which the range
    bounds follow too; Python's order of the same strings differs under most collations
    (ICU's or glibc's ``en_US``: ``'a-b' < 'Ab' < 'B'``). So a position is found by where
    it is in the list, never by comparing strings here: a binary search would take a
    batch's keys from the wrong place, and the range would then leave some out.
    """

    def __init__(
        self,
        keys: list[str],
        sessions_per_key: float,
        table: str = sql.SESSIONS_TABLE,
        start: str | None = None,
    ) -> None:
        super().__init__(table)
        self.keys = keys  # in the server's order
        self.after = {key: i + 1 for i, key in enumerate(keys)}  # how many keys up to it
        self.start = start  # the position the list was read after
        self.sessions_per_key = sessions_per_key
        self.extra_predicate = " AND s.session_id = ANY(:keys)"

    def _index(self, key: str | None) -> int:
        """How many keys of the list lie up to ``key``: a key of the list, or where the
        list was read from."""
        if key is None or key == self.start:
            return 0
        try:
            return self.after[key]
        except KeyError:
            raise ValueError(f"catch-up position {key!r} is not in the list it walks") from None

    def bound_after(self, conn: Connection, lo: str | None, offset: int) -> str | None:
        at = self._index(lo) + offset
        return self.keys[at] if at < len(self.keys) else None

    def params(self, lo: str | None, hi: str | None) -> dict[str, Any]:
        end = len(self.keys) if hi is None else self._index(hi)
        return {**super().params(lo, hi), "keys": self.keys[self._index(lo) : end]}

    def count(self, conn: Connection, lo: str | None, hi: str | None) -> int:
        return (len(self.keys) if hi is None else self._index(hi)) - self._index(lo)

    def sessions(self, keys: int) -> float:
        return keys * self.sessions_per_key


def catchup_keys(conn: Connection, lo: str | None, limit: int, order: KeyOrder) -> list[str]:
    """The sorted keys after ``lo`` of the sessions the catch-up looks at in ``order``'s
    table (:meth:`KeyOrder.catchup_needs`), at most ``limit`` of them (one scan)."""
    params: dict[str, Any] = {"limit": limit}
    if lo is not None:
        params["lo"] = lo
    if order.moved_since is not None:
        params["since"] = str(order.moved_since)
    stmt = sql.catchup_keys_query(lo is not None, order.table, order.catchup_needs())
    return [str(k) for k in conn.execute(stmt, params).scalars()]


class RowidOrder(KeyOrder):
    """SQLite: ranges of ``rowid``; a key is ``#rowid:<rowid>:<session_id>``."""

    name = "rowid"
    column = "s.rowid"

    def owns(self, key: str) -> bool:
        return self.decode(key) is not None

    @staticmethod
    def decode(key: str) -> tuple[int, str] | None:
        if not key.startswith(ROWID_KEY_PREFIX):
            return None
        number, sep, session_id = key[len(ROWID_KEY_PREFIX) :].partition(":")
        if not sep or not number.isdigit():
            return None
        return int(number), session_id

    def bound_after(self, conn: Connection, lo: str | None, offset: int) -> str | None:
        params: dict[str, Any] = {"offset": offset}
        if lo is not None:
            params["lo"] = self.param(lo)
        row = conn.execute(sql.next_rowid_bound(lo is not None), params).first()
        return None if row is None else f"{ROWID_KEY_PREFIX}{int(row[0])}:{row[1]}"

    def param(self, key: str) -> Any:
        decoded = self.decode(key)
        if decoded is None:
            raise ValueError(f"not a rowid position: {key!r}")
        return decoded[0]

    def show(self, key: str) -> str:
        return str(self.param(key))

    def still_valid(self, conn: Connection, lo: str | None) -> bool:
        if lo is None:
            return True
        decoded = self.decode(lo)
        if decoded is None:
            return False
        rowid, session_id = decoded
        return conn.execute(sql.ROWID_OF, {"sid": session_id}).scalar() == rowid


SESSION_ID_ORDER = KeyOrder()
ROWID_ORDER = RowidOrder()


@dataclass(frozen=True)
class Range:
    """One batch's range, as handed to the statement that processes it."""

    phase: str
    order: KeyOrder
    lo: str | None
    hi: str | None

    @property
    def has_lo(self) -> bool:
        return self.lo is not None

    @property
    def has_hi(self) -> bool:
        return self.order.has_hi(self.hi)

    @property
    def params(self) -> dict[str, Any]:
        return self.order.params(self.lo, self.hi)

    @property
    def needs(self) -> str:
        """The catch-up looks only at sessions without source_ip (module docstring), and
        after a walk by blocks at those written since it began."""
        base = self.order.catchup_needs() if self.phase == CATCHUP else sql.NEEDS_SNAPSHOT
        return base + self.order.extra_predicate

    @property
    def predicate(self) -> str:
        return self.order.range_sql(self.has_lo, self.has_hi)
