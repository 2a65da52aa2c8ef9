"""How the JSON columns that the backfill reads are stored, decided once per run.

Databases built by our ``0001_baseline`` store JSON as ``jsonb``; the databases in the
field (built by cowrieprocessor's own schema code) store ``session_summaries.enrichment``
and ``raw_events.payload`` as ``json`` and ``ip_inventory.enrichment`` as ``jsonb``.
PostgreSQL's ``->`` and ``->>`` work on both, but the type tests do not
(``jsonb_typeof(json)`` does not exist), so every statement is rendered for the types
the catalog reports, once at the start of a run, never per row. SQLite stores JSON as
text and has one set of functions for it.

Offline (``alembic upgrade head --sql``) there is no catalog to read: the statements
cast each column to ``jsonb``, which works on both types (a no-op on ``jsonb``, a parse
on ``json``).
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import Connection

from cowrieprocessor.errors import IncompatibleSchema

# (table, column) -> the name a statement uses for it.
JSON_COLUMNS = {
    ("session_summaries", "enrichment"): "s.enrichment",
    ("raw_events", "payload"): "e.payload",
    ("ip_inventory", "enrichment"): "i.enrichment",
}
PG_JSON_TYPES = frozenset({"json", "jsonb"})


@dataclass(frozen=True)
class JsonColumn:
    """One JSON column as a statement must spell it."""

    ref: str  # e.g. "s.enrichment"
    kind: str = "jsonb"  # "json" or "jsonb"
    cast: bool = False  # offline: the type is unknown, cast to jsonb

    @property
    def expr(self) -> str:
        return f"({self.ref})::jsonb" if self.cast else self.ref

    def typeof(self, path: str) -> str:
        """``json_typeof`` / ``jsonb_typeof`` of ``expr -> path`` (path: fixed SQL)."""
        return f"{self.kind}_typeof({self.expr} {path})"

    def elements(self, path: str) -> str:
        return f"{self.kind}_array_elements({self.expr} {path})"


@dataclass(frozen=True)
class JsonTypes:
    """The three JSON columns the backfill reads (PostgreSQL)."""

    session_enrichment: JsonColumn
    event_payload: JsonColumn
    inventory_enrichment: JsonColumn

    @classmethod
    def uniform(cls, kind: str = "jsonb", *, cast: bool = False) -> JsonTypes:
        refs = list(JSON_COLUMNS.values())
        return cls(*(JsonColumn(ref, kind, cast) for ref in refs))

    def describe(self) -> str:
        if self.session_enrichment.cast:
            return "JSON columns cast to jsonb (types unknown offline)"
        return ", ".join(
            f"{table}.{column} {col.kind}"
            for (table, column), col in zip(JSON_COLUMNS, self.columns(), strict=True)
        )

    def columns(self) -> tuple[JsonColumn, JsonColumn, JsonColumn]:
        return (self.session_enrichment, self.event_payload, self.inventory_enrichment)


JSONB = JsonTypes.uniform("jsonb")
OFFLINE = JsonTypes.uniform("jsonb", cast=True)

_PG_COLUMN_TYPE = sa.text(
    "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
    "WHERE a.attrelid = to_regclass(:table) AND a.attname = :column "
    "AND NOT a.attisdropped"
)


def detect(conn: Connection) -> JsonTypes:
    """Read the JSON columns' types from the catalog (PostgreSQL; SQLite needs none).

    Raises :class:`IncompatibleSchema` naming the column when one is missing or of a
    type the backfill cannot read as JSON.
    """
    if conn.dialect.name != "postgresql":
        return JSONB
    found = []
    for (table, column), ref in JSON_COLUMNS.items():
        kind = conn.execute(_PG_COLUMN_TYPE, {"table": table, "column": column}).scalar()
        if kind is None:
            raise IncompatibleSchema(f"column {table}.{column} does not exist")
        if kind not in PG_JSON_TYPES:
            raise IncompatibleSchema(
                f"column {table}.{column} is {kind}, not json or jsonb: the backfill "
                "cannot read it; convert it (ALTER COLUMN ... TYPE jsonb USING ...) first"
            )
        found.append(JsonColumn(ref, str(kind)))
    return JsonTypes(*found)
