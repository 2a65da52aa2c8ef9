"""The ledger: what each revision created, and what it adopted.

``cowrie_schema_ledger`` has one row per object a revision touched: created (ours, to
drop on the way down) or adopted (there before; never dropped). A revision writes its
rows in the same transaction as its DDL, or, for a build that cannot run in a
transaction (``CREATE INDEX CONCURRENTLY``), commits them before the build starts, so
that a build a crash cut short is still known as ours. A downgrade drops exactly what
its upgrade created, and says what it keeps.

A database without a ledger was upgraded before the ledger existed: downgrades then
fall back to dropping by name, except on a database that has upstream's
``schema_state`` (adopted by ``stamp``), where nothing adopted is ever dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import Connection

from cowrieprocessor.db import adoption

log = logging.getLogger("cowrieprocessor.migrations.ledger")

LEDGER_TABLE = "cowrie_schema_ledger"
CREATED, ADOPTED = "created", "adopted"

_metadata = sa.MetaData()
ledger_table = sa.Table(
    LEDGER_TABLE,
    _metadata,
    sa.Column("revision", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("detail", sa.Text),
    sa.Column(
        "recorded_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
    ),
)


@dataclass(frozen=True)
class Entry:
    revision: str
    kind: str
    name: str
    action: str
    detail: str | None


def ledger_exists(conn: Connection) -> bool:
    return sa.inspect(conn).has_table(LEDGER_TABLE)


def record(
    conn: Connection,
    revision: str,
    kind: str,
    name: str,
    action: str,
    detail: str | None = None,
) -> None:
    """Write one ledger entry (in the caller's transaction, beside the DDL it describes)."""
    ledger_table.create(conn, checkfirst=True)
    key = (
        (ledger_table.c.revision == revision)
        & (ledger_table.c.kind == kind)
        & (ledger_table.c.name == name)
    )
    conn.execute(ledger_table.delete().where(key))
    conn.execute(
        ledger_table.insert().values(
            revision=revision, kind=kind, name=name, action=action, detail=detail
        )
    )


def entries(conn: Connection, revision: str) -> list[Entry]:
    if not ledger_exists(conn):
        return []
    rows = conn.execute(
        sa.select(ledger_table).where(ledger_table.c.revision == revision)
    ).mappings()
    return [Entry(r["revision"], r["kind"], r["name"], r["action"], r["detail"]) for r in rows]


def forget(conn: Connection, revision: str) -> None:
    """Delete a revision's entries (its downgrade has undone them)."""
    if ledger_exists(conn):
        conn.execute(ledger_table.delete().where(ledger_table.c.revision == revision))


def forget_entry(conn: Connection, revision: str, kind: str, name: str) -> None:
    """Delete one entry (what it recorded is undone: a deferred index built again)."""
    if ledger_exists(conn):
        conn.execute(
            ledger_table.delete().where(
                (ledger_table.c.revision == revision)
                & (ledger_table.c.kind == kind)
                & (ledger_table.c.name == name)
            )
        )


def drop_ledger_if_empty(conn: Connection) -> None:
    if (
        ledger_exists(conn)
        and conn.execute(sa.select(sa.func.count()).select_from(ledger_table)).scalar_one() == 0
    ):
        ledger_table.drop(conn)


def names(items: Iterable[Entry], action: str, kind: str | None = None) -> list[str]:
    return [e.name for e in items if e.action == action and (kind is None or e.kind == kind)]


def created(
    conn: Connection | None,
    revision: str,
    kind: str,
    *,
    before_ledger: Sequence[str],
    adopted_before_ledger: Sequence[str],
) -> list[str]:
    """The objects of ``kind`` that ``revision`` created: what its downgrade may drop.

    ``before_ledger`` is every name of ``kind`` the revision ever creates. From the
    ledger when the revision left entries there, but only those names: the ledger is a
    table that other roles may write, and a row naming anything else (another table's
    index, a column of 0001, a name made to be spliced into SQL) is left alone with a
    warning. A revision without entries ran before the ledger existed (or ``conn`` is
    None: offline): it created ``before_ledger``, unless the database has upstream's
    ``schema_state`` (it was adopted by ``stamp``), where only ``adopted_before_ledger``
    can be ours.
    """
    if conn is None:
        return list(before_ledger)
    done = entries(conn, revision)
    if done:
        listed = names(done, CREATED, kind)
        foreign = [name for name in listed if name not in before_ledger]
        if foreign:
            log.warning(
                "the ledger says %s created %s %s, a name it never creates: left alone "
                "(check who writes to %s)",
                revision,
                kind,
                ", ".join(map(repr, foreign)),
                LEDGER_TABLE,
            )
        return [name for name in listed if name in before_ledger]
    if adoption.schema_code_version(conn) is None:
        return list(before_ledger)
    log.warning(
        "%s left no ledger entries on a database adopted before the ledger existed: "
        "of its %ss, only %s can be ours",
        revision,
        kind,
        ", ".join(adopted_before_ledger) or "none",
    )
    return list(adopted_before_ledger)


def finish_downgrade(conn: Connection | None, revision: str) -> None:
    """Say what the downgrade kept (it was adopted) and forget the revision's entries."""
    if conn is None:
        return
    kept = [e for e in entries(conn, revision) if e.action == ADOPTED]
    if kept:
        log.info(
            "%s downgrade keeps what it adopted (it existed before): %s",
            revision,
            ", ".join(f"{e.kind} {e.name}" for e in kept),
        )
    forget(conn, revision)
