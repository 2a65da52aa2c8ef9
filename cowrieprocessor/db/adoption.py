"""Adopting the databases in the field, and remembering what our revisions created.

Every database that needs the backfill was built by cowrieprocessor's own schema code
(a ``schema_state`` table, versions 16/17; ../shared/reference/upstream-schema.md), not by
our ``0001_baseline``. Such a database already has the tables, often the five snapshot
columns, a country CHECK, a ``source_ip`` foreign key and indexes on the snapshot
columns, under other names than ours. This module lets the revisions:

* **assess** a database before changing anything (:func:`assess`): which tables and
  columns exist, whether their types are usable, what is missing. An incompatible
  database is refused by :func:`require_adoptable` with a message naming each problem;
* **recognise objects by definition, not by name** (:func:`find_country_check`,
  :func:`find_source_ip_fk`, :func:`find_index`): a CHECK that holds
  ``snapshot_country`` to two capital letters, an FK from ``source_ip`` to
  ``ip_inventory(ip_address)``, a plain b-tree index whose key columns are exactly the
  ones needed, whatever they are called, are reused and never duplicated;
* and the revisions record what they created and what they adopted in the ledger
  (:mod:`cowrieprocessor.db.ledger`).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql

from cowrieprocessor.db import partitions
from cowrieprocessor.errors import IncompatibleSchema

SCHEMA_STATE_TABLE = "schema_state"  # upstream's own version table
BASELINE_TABLES = ("asn_inventory", "ip_inventory", "session_summaries", "raw_events")

# Today's names for what 0002 and 0004 create when no equivalent exists, for the
# callers that are not revisions (the report, the benchmarks, the tests). A revision
# never reads these: it states its own names as literals and passes them in
# (:class:`OurNames`), so that an edit here never changes what an old revision does.
FK_NAME = "fk_session_summaries_source_ip_ip_inventory"
CK_NAME = "ck_session_summaries_snapshot_country_iso2"
# 0004: name -> key columns. The covering index serves the runbook's query
# (snapshot_country, snapshot_asn) with an index-only scan on both dialects; its name
# is ours alone (the field's schema code has no such index).
COVERING_INDEX = "ix_session_summaries_snapshot_country_snapshot_asn_session_id"
SNAPSHOT_INDEXES: dict[str, tuple[str, ...]] = {
    "ix_session_summaries_source_ip": ("source_ip",),
    "ix_session_summaries_snapshot_asn": ("snapshot_asn",),
    "ix_session_summaries_snapshot_country": ("snapshot_country",),
    "ix_session_summaries_snapshot_ip_type": ("snapshot_ip_type",),
    COVERING_INDEX: ("snapshot_country", "snapshot_asn", "session_id"),
}


@dataclass(frozen=True)
class OurNames:
    """The names our revisions give what they create when no equivalent exists: the
    ``source_ip`` foreign key, the country CHECK, and the indexes (name -> key columns;
    empty when the caller plans none). Used to plan (:func:`assess`) and to prefer ours
    among equivalent indexes (:func:`find_index`)."""

    fk: str
    check: str
    indexes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


CURRENT_NAMES = OurNames(FK_NAME, CK_NAME, SNAPSHOT_INDEXES)

# --- column types ---------------------------------------------------------------------

TEXT, INTEGER, TIMESTAMP, JSON, TEXT_LIST = "text", "integer", "timestamp", "json", "text list"


def _kinds(type_: sa.types.TypeEngine[object], dialect: str) -> frozenset[str]:
    """What a column of ``type_`` can serve as."""
    if isinstance(type_, postgresql.ARRAY):
        return frozenset({TEXT_LIST if isinstance(type_.item_type, sa.String) else "array"})
    if isinstance(type_, sa.JSON):
        return frozenset({JSON} if dialect == "postgresql" else {TEXT_LIST, JSON})
    if isinstance(type_, sa.String):
        # SQLite stores JSON as text: a text column holds JSON (and JSON arrays) there
        return frozenset({TEXT} if dialect == "postgresql" else {TEXT, JSON, TEXT_LIST})
    if isinstance(type_, sa.Integer):
        return frozenset({INTEGER})
    if isinstance(type_, sa.DateTime):
        return frozenset({TIMESTAMP})
    return frozenset({type(type_).__name__.lower()})


# What the backfill and our revisions read or write: (table, column) -> kind needed.
REQUIRED_COLUMNS: dict[str, dict[str, str]] = {
    "session_summaries": {"session_id": TEXT, "enrichment": JSON},
    "raw_events": {
        "id": INTEGER,
        "session_id": TEXT,
        "payload": JSON,
        "event_timestamp": TIMESTAMP,
    },
    "ip_inventory": {
        "ip_address": TEXT,
        "current_asn": INTEGER,
        "geo_country": TEXT,
        "ip_types": TEXT_LIST,
        "enrichment": JSON,
        "enrichment_updated_at": TIMESTAMP,
    },
    "asn_inventory": {"asn_number": INTEGER},
}
SNAPSHOT_COLUMN_KINDS: dict[str, str] = {
    "source_ip": TEXT,
    "snapshot_asn": INTEGER,
    "snapshot_country": TEXT,
    "snapshot_ip_type": TEXT,
    "enrichment_at": TIMESTAMP,
}
# Left by upstream's schema code before its own fix script (text[] instead of text).
LEGACY_SNAPSHOT_COLUMNS = ("snapshot_ip_types",)


@dataclass
class Assessment:
    """What a database is, and what adopting it means (read-only; see :func:`assess`)."""

    dialect: str
    tables: list[str]
    alembic_version: bool
    schema_code_version: str | None
    problems: list[str] = field(default_factory=list)
    snapshot_columns: list[str] = field(default_factory=list)  # present and usable
    missing_snapshot_columns: list[str] = field(default_factory=list)
    legacy_columns: list[str] = field(default_factory=list)
    reuse: list[str] = field(default_factory=list)  # existing objects our revisions use
    create: list[str] = field(default_factory=list)  # objects our revisions will create

    @property
    def empty(self) -> bool:
        return not self.tables

    @property
    def origin(self) -> str:
        if self.schema_code_version is not None:
            return f"built by cowrieprocessor's schema code, version {self.schema_code_version}"
        if self.alembic_version:
            return "managed by Alembic"
        if self.empty:
            return "empty"
        return "not managed by Alembic (no schema_state either)"

    def summary(self) -> str:
        """One line for the log: what is adopted, reused and created."""
        parts = [f"schema {self.origin}: adopting {', '.join(self.tables)}"]
        if self.reuse:
            parts.append("reusing " + ", ".join(self.reuse))
        if self.create:
            parts.append("creating " + ", ".join(self.create))
        return "; ".join(parts)


def schema_code_version(conn: Connection) -> str | None:
    """Upstream's ``schema_state.schema_version``, or None when there is none."""
    if not sa.inspect(conn).has_table(SCHEMA_STATE_TABLE):
        return None
    try:
        with conn.begin_nested():
            value = conn.execute(
                sa.text("SELECT value FROM schema_state WHERE key = 'schema_version'")
            ).scalar()
    except sa.exc.DBAPIError:
        return "unknown"
    return None if value is None else str(value)


def assess(conn: Connection, names: OurNames = CURRENT_NAMES) -> Assessment:
    """Read the catalog and say what the database is and what adopting it needs: what
    is reused, and what would be created under ``names``."""
    inspector = sa.inspect(conn)
    dialect = conn.dialect.name
    tables = set(inspector.get_table_names())
    found = Assessment(
        dialect=dialect,
        tables=[t for t in BASELINE_TABLES if t in tables],
        alembic_version="alembic_version" in tables
        and conn.execute(sa.text("SELECT count(*) FROM alembic_version")).scalar_one() > 0,
        schema_code_version=schema_code_version(conn),
    )
    if found.empty:
        return found
    for table, needed in REQUIRED_COLUMNS.items():
        if table not in tables:
            found.problems.append(f"table {table} is missing")
            continue
        columns = {c["name"]: c for c in inspector.get_columns(table)}
        for name, kind in needed.items():
            _check_column(found, table, columns, name, kind)
    if "session_summaries" not in tables:
        return found
    columns = {c["name"]: c for c in inspector.get_columns("session_summaries")}
    pk = inspector.get_pk_constraint("session_summaries").get("constrained_columns") or []
    # a partitioned table's key must hold its partition key: (session_id, first_event_at)
    # for a range on first_event_at; each partition's key still starts with session_id
    partitioned = partitions.is_partitioned(conn)
    if pk != ["session_id"] and not (partitioned and pk[:1] == ["session_id"]):
        found.problems.append(
            f"session_summaries' primary key is {pk or 'missing'}, not session_id"
            + (" (or, partitioned, one that starts with it)" if partitioned else "")
        )
    for name, kind in SNAPSHOT_COLUMN_KINDS.items():
        if name not in columns:
            found.missing_snapshot_columns.append(name)
            found.create.append(f"column {name}")
        elif _check_column(found, "session_summaries", columns, name, kind):
            found.snapshot_columns.append(name)
    found.legacy_columns = [c for c in LEGACY_SNAPSHOT_COLUMNS if c in columns]
    if found.problems or "ip_inventory" not in tables:
        return found
    _plan_constraints(conn, found, names)
    return found


def _check_column(
    found: Assessment,
    table: str,
    columns: dict[str, sa.engine.interfaces.ReflectedColumn],
    name: str,
    kind: str,
) -> bool:
    column = columns.get(name)
    if column is None:
        found.problems.append(f"column {table}.{name} is missing")
        return False
    if kind not in _kinds(column["type"], found.dialect):
        found.problems.append(
            f"column {table}.{name} is {column['type']}, which cannot serve as {kind}"
        )
        return False
    return True


def _plan_constraints(conn: Connection, found: Assessment, names: OurNames) -> None:
    constraints = (
        ("CHECK", "snapshot_country", find_country_check, names.check),
        ("FK", "source_ip", find_source_ip_fk, names.fk),
    )
    for kind, column, finder, ours in constraints:
        hit = finder(conn) if column in found.snapshot_columns else None
        if hit is not None:
            found.reuse.append(f"{kind} {hit.name}{'' if hit.valid else ' (NOT VALID)'}")
        elif column in found.snapshot_columns or column in found.missing_snapshot_columns:
            found.create.append(f"{kind} {ours}")
    present = set(found.snapshot_columns) | {"session_id"}
    for name, columns in names.indexes.items():
        index = find_index(conn, columns, ours=names.indexes) if present >= set(columns) else None
        if index:
            found.reuse.append(f"index {index.name} ({', '.join(columns)})")
        else:
            found.create.append(f"index {name} ({', '.join(columns)})")


def require_adoptable(found: Assessment) -> None:
    """Refuse a database we cannot adopt, before any change, naming every problem."""
    if not found.problems:
        return
    hint = ""
    if "ip_inventory" not in found.tables and found.dialect == "sqlite":
        hint = (
            " A SQLite database of cowrieprocessor's schema code has no IP inventory "
            "(its schema code skips the inventory on SQLite), so there is nothing to "
            "backfill from: run cowrieprocessor on PostgreSQL, or load its inventory first."
        )
    raise IncompatibleSchema(
        f"cannot adopt this database ({found.origin}): "
        + "; ".join(found.problems)
        + ". Nothing was changed."
        + hint
    )


# --- recognising objects by definition ---------------------------------------------------


@dataclass(frozen=True)
class Found:
    name: str
    valid: bool = True


_LITERAL = re.compile(r"('(?:[^']|'')*')")
_CASTS = re.compile(r"::[a-z ]+(?:\(\d+\))?")


def normalize_check(sqltext: str) -> str:
    """A CHECK's text with whitespace, parentheses, quotes and casts removed (literals kept)."""
    parts = _LITERAL.split(sqltext)
    out = []
    for n, part in enumerate(parts):
        if n % 2:  # a string literal: as it is
            out.append(part)
            continue
        part = _CASTS.sub("", part.lower())
        out.append(re.sub(r"[\s()\"]", "", part))
    return "".join(out)


_TWO_CAPITALS = ("'^[A-Z]{2}$'", "'^[A-Z][A-Z]$'")
COUNTRY_CHECK_FORMS = frozenset(
    normalize_check(f"{prefix}snapshot_country {op} {pattern}")
    for prefix in ("", "snapshot_country IS NULL OR ")
    for op, patterns in (("~", _TWO_CAPITALS), ("GLOB", ("'[A-Z][A-Z]'",)))
    for pattern in patterns
)


def find_country_check(conn: Connection) -> Found | None:
    """A CHECK holding snapshot_country to two capital letters (or NULL), by definition."""
    if conn.dialect.name == "postgresql":
        rows = conn.execute(
            sa.text(
                "SELECT conname, pg_get_constraintdef(oid), convalidated FROM pg_constraint "
                "WHERE conrelid = to_regclass('session_summaries') AND contype = 'c' "
                "ORDER BY conname"
            )
        ).all()
        for name, definition, valid in rows:
            body = re.sub(r"^\s*CHECK\s*|\s*NOT VALID\s*$", "", str(definition))
            if normalize_check(body) in COUNTRY_CHECK_FORMS:
                return Found(str(name), bool(valid))
        return None
    for check in sa.inspect(conn).get_check_constraints("session_summaries"):
        if normalize_check(str(check["sqltext"])) in COUNTRY_CHECK_FORMS:
            return Found(str(check["name"] or "(unnamed)"))
    return None


def find_source_ip_fk(conn: Connection) -> Found | None:
    """A foreign key from session_summaries.source_ip to ip_inventory(ip_address)."""
    for fk in sa.inspect(conn).get_foreign_keys("session_summaries"):
        if (
            fk["constrained_columns"] == ["source_ip"]
            and fk["referred_table"] == "ip_inventory"
            and fk["referred_columns"] == ["ip_address"]
        ):
            name = fk["name"] or "(unnamed)"
            if conn.dialect.name != "postgresql":
                return Found(name)
            valid = conn.execute(
                sa.text(
                    "SELECT convalidated FROM pg_constraint WHERE conname = :name "
                    "AND conrelid = to_regclass('session_summaries')"
                ),
                {"name": name},
            ).scalar()
            return Found(name, bool(valid))
    return None


def index_is_invalid(conn: Connection, name: str, table: str = "session_summaries") -> bool:
    """PostgreSQL: an index ``name`` of ``table`` exists and is INVALID (a concurrent
    build cut short: ``CREATE INDEX CONCURRENTLY IF NOT EXISTS`` would keep it so)."""
    return bool(
        conn.execute(
            sa.text(
                "SELECT NOT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE c.relname = :name AND i.indrelid = to_regclass(quote_ident(:table))"
            ),
            {"name": name, "table": table},
        ).scalar()
    )


def find_index(
    conn: Connection,
    columns: Sequence[str],
    table: str = "session_summaries",
    *,
    ours: Collection[str] = frozenset(SNAPSHOT_INDEXES),
) -> Found | None:
    """A valid, plain (b-tree, not partial, no expression) index on session_summaries
    (or ``table``, a plain name in the search path, PostgreSQL) whose key columns are
    exactly ``columns``, in order; one named in ``ours`` first when there are two."""
    wanted = list(columns)
    candidates: list[str] = []
    if conn.dialect.name == "postgresql":
        rows = conn.execute(
            sa.text(
                """SELECT c.relname,
                          ARRAY(SELECT a.attname FROM unnest(i.indkey[0:i.indnkeyatts - 1])
                                WITH ORDINALITY AS k(attnum, n)
                                JOIN pg_attribute a ON a.attrelid = i.indrelid
                                     AND a.attnum = k.attnum
                                ORDER BY k.n) AS keys
                   FROM pg_index i
                   JOIN pg_class c ON c.oid = i.indexrelid
                   JOIN pg_am am ON am.oid = c.relam
                   WHERE i.indrelid = to_regclass(quote_ident(:table))
                     AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL
                     AND am.amname = 'btree'
                   ORDER BY c.relname"""
            ),
            {"table": table},
        ).all()
        candidates = [str(name) for name, keys in rows if list(keys) == wanted]
    else:
        for index in sa.inspect(conn).get_indexes("session_summaries"):
            options = index.get("dialect_options", {})
            if index["column_names"] == wanted and not options.get("sqlite_where"):
                candidates.append(str(index["name"]))
    if not candidates:
        return None
    preferred = [name for name in candidates if name in ours]
    return Found((preferred or candidates)[0])
