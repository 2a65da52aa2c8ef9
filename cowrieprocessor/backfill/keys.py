"""The two key orders a walk can follow, and the range one batch processes.

``session_id`` ranges on both dialects; on SQLite, adaptive batches walk ``rowid``
instead (the physical order): random session ids scatter every key range over the
whole file, so each SQLite commit would rewrite thousands of pages. A rowid position is
saved as ``#rowid:<rowid>:<session_id>`` and trusted only while that session still has
that rowid (VACUUM may renumber them); otherwise the phase restarts in ``session_id``
order, which is always safe since a range run twice changes nothing. A resumed phase
keeps the order it was started in.
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
    """Ranges of ``session_id``: keys are the session ids themselves."""

    name = "session_id"
    column = "s.session_id"

    def owns(self, key: str) -> bool:
        """Whether a saved position was written by this order."""
        return not key.startswith(ROWID_KEY_PREFIX)

    def bound_after(self, conn: Connection, lo: str | None, offset: int) -> str | None:
        params: dict[str, Any] = {"offset": offset}
        if lo is not None:
            params["lo"] = lo
        value = conn.execute(sql.next_bound(lo is not None), params).scalar()
        return None if value is None else str(value)

    def param(self, key: str) -> Any:
        return key

    def show(self, key: str) -> str:
        return repr(key)

    def still_valid(self, conn: Connection, lo: str | None) -> bool:
        return True

    def describe(self, lo: str | None, hi: str | None) -> str:
        left = "(start" if lo is None else f"({self.show(lo)}"
        right = "end)" if hi is None else f"{self.show(hi)}]"
        return f"{self.name} range {left}, {right}"

    def params(self, lo: str | None, hi: str | None) -> dict[str, Any]:
        params = {}
        if lo is not None:
            params["lo"] = self.param(lo)
        if hi is not None:
            params["hi"] = self.param(hi)
        return params


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
        return self.hi is not None

    @property
    def params(self) -> dict[str, Any]:
        return self.order.params(self.lo, self.hi)

    @property
    def needs(self) -> str:
        """The catch-up looks only at sessions without source_ip (module docstring)."""
        return sql.CATCHUP_NEEDS if self.phase == CATCHUP else sql.NEEDS_SNAPSHOT
