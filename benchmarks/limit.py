"""The limit: the same work done the fastest way the database allows, with no safety.

One unbatched ``UPDATE ... FROM ip_inventory`` over the whole table, with the
product's semantics (canonical IP from ``source_ip``, else the enrichment JSON, else
the earliest ``raw_events`` row; only NULL columns filled; the same country and IP-type
rules), then what revision 0004 does after the data is in, done the quick way:

* PostgreSQL: plain ``CREATE INDEX`` (not ``CONCURRENTLY``) of those of 0004's indexes
  whose key columns no index of the table has yet, ``VACUUM (ANALYZE)``, and
  ``VALIDATE CONSTRAINT`` of every constraint of the table that is ``NOT VALID``;
* SQLite: the same ``CREATE INDEX`` statements and ``ANALYZE``.

Everything is read from the catalog once, before the clock starts, so the same code
serves both shapes of database (benchmarks/run.py ``--shapes``): ours at
``0002_snapshot_columns`` (``jsonb``, no snapshot index yet, the two constraints of 0002
``NOT VALID``: all five indexes built, both constraints validated) and the field's,
built by upstream's schema code (``json`` columns, read with ``json_typeof``; the
snapshot indexes of the ``idx_`` family present, and maintained by the UPDATE as they
are by the product's; nothing ``NOT VALID``).

No batches, no progress table, no retries, no lock or statement timeouts: one
transaction holds a row lock on every session until it commits. That is what a
production system cannot afford, and why it is only the yardstick.

The statement resolves the IP inside the join condition (one pass over the table, a
hash join with ``ip_inventory`` on PostgreSQL). Against the product's own per-range
statement run without a range (``--statement product``), at 1.68M sessions on the
benchmark machine: PostgreSQL 85-97 s against 119-150 s, SQLite 33 s against 33 s. It is
the faster (or equal) of the two, so it is the limit.

Run on its own: ``python -m benchmarks.limit URL``; prints one JSON line of step times.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import sys
import time
from typing import Any

import sqlalchemy as sa

from cowrieprocessor.backfill import sql as product_sql
from cowrieprocessor.db.engine import create_engine_from_url
from cowrieprocessor.settings import PROJECT_ROOT


def _revision_0004() -> Any:
    """Revision 0004's module: the limit builds exactly the indexes and validates exactly
    the constraints that the product's index revision does."""
    path = PROJECT_ROOT / "migrations" / "versions" / "0004_snapshot_indexes.py"
    spec = importlib.util.spec_from_file_location("cowrie_revision_0004", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_0004 = _revision_0004()
INDEXES: dict[str, tuple[str, ...]] = dict(_0004.INDEXES)

_SET = """
    source_ip = COALESCE(s.source_ip, i.ip_address),
    snapshot_asn = COALESCE(s.snapshot_asn, i.current_asn),
    snapshot_country = COALESCE(s.snapshot_country, {country}),
    snapshot_ip_type = COALESCE(s.snapshot_ip_type, {ip_type}),
    enrichment_at = COALESCE(s.enrichment_at, i.enrichment_updated_at)"""
_WOULD_CHANGE = """(
      s.source_ip IS NULL
      OR (s.snapshot_asn IS NULL AND i.current_asn IS NOT NULL)
      OR (s.snapshot_country IS NULL AND {country} IS NOT NULL)
      OR (s.snapshot_ip_type IS NULL AND {ip_type} IS NOT NULL)
      OR (s.enrichment_at IS NULL AND i.enrichment_updated_at IS NOT NULL))"""

PG_COUNTRY = (
    "(CASE WHEN i.geo_country ~ '^[A-Z]{2}$' AND i.geo_country <> 'XX' THEN i.geo_country END)"
)
PG_IP_TYPE = "NULLIF(i.ip_types[1], '')"
PG_IP = """COALESCE(
        s.source_ip,
        CASE WHEN {enrichment_typeof}(s.enrichment -> 'session_metadata' -> 'source_ip') = 'string'
             THEN NULLIF(lower(btrim(s.enrichment -> 'session_metadata' ->> 'source_ip')), '')
        END,
        (SELECT lower(btrim(e.payload ->> 'src_ip')) FROM raw_events e
          WHERE e.session_id = s.session_id
            AND {payload_typeof}(e.payload -> 'src_ip') = 'string'
            AND btrim(e.payload ->> 'src_ip') <> ''
          ORDER BY e.event_timestamp ASC NULLS LAST, e.id
          LIMIT 1))"""

SQLITE_COUNTRY = (
    "(CASE WHEN i.geo_country GLOB '[A-Z][A-Z]' AND i.geo_country <> 'XX' THEN i.geo_country END)"
)
SQLITE_IP_TYPE = """(CASE WHEN json_valid(i.ip_types) THEN
        CASE WHEN json_type(i.ip_types, '$[0]') = 'text'
             THEN NULLIF(json_extract(i.ip_types, '$[0]'), '') END END)"""
SQLITE_IP = """COALESCE(
        s.source_ip,
        CASE WHEN json_valid(s.enrichment) THEN
            CASE WHEN json_type(s.enrichment, '$.session_metadata.source_ip') = 'text'
                 THEN NULLIF(lower(trim(json_extract(s.enrichment,
                                                     '$.session_metadata.source_ip'))), '')
            END
        END,
        (SELECT CASE WHEN json_valid(e.payload) THEN
                    CASE WHEN json_type(e.payload, '$.src_ip') = 'text'
                         THEN NULLIF(lower(trim(json_extract(e.payload, '$.src_ip'))), '')
                    END
                END AS ev_ip
         FROM raw_events e
         WHERE e.session_id = s.session_id AND ev_ip IS NOT NULL
         ORDER BY e.event_timestamp IS NULL, e.event_timestamp, e.id
         LIMIT 1))"""


def update_statement(dialect: str, json_kinds: dict[str, str] | None = None) -> str:
    """The one statement: resolve the IP in the join condition, fill NULL columns.

    ``json_kinds`` (PostgreSQL): ``json`` or ``jsonb`` for ``session_summaries.enrichment``
    and ``raw_events.payload`` (default ``jsonb``), as :func:`json_kinds` reads them.
    """
    if dialect == "postgresql":
        kinds = json_kinds or {}
        ip = PG_IP.format(
            enrichment_typeof=f"{kinds.get('enrichment', 'jsonb')}_typeof",
            payload_typeof=f"{kinds.get('payload', 'jsonb')}_typeof",
        )
        country, ip_type = PG_COUNTRY, PG_IP_TYPE
    else:
        country, ip_type, ip = SQLITE_COUNTRY, SQLITE_IP_TYPE, SQLITE_IP
    fill = {"country": country, "ip_type": ip_type}
    return (  # fixed fragments of this file only; no value is ever formatted in
        f"UPDATE session_summaries AS s SET {_SET.format(**fill)}\n"  # noqa: S608
        f"FROM ip_inventory AS i\n"
        f"WHERE i.ip_address = {ip}\n"
        f"  AND {product_sql.NEEDS_SNAPSHOT}\n"
        f"  AND {_WOULD_CHANGE.format(**fill)}"
    )


_PG_COLUMN_TYPE = sa.text(
    "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
    "WHERE a.attrelid = to_regclass(:table) AND a.attname = :column AND NOT a.attisdropped"
)
# The key columns of every plain (no predicate, no expression) btree index of the table.
_PG_INDEX_KEYS = sa.text(
    "SELECT ARRAY(SELECT a.attname FROM generate_subscripts(i.indkey, 1) AS k "
    "             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[k] "
    "             WHERE k < i.indnkeyatts ORDER BY k) "
    "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
    "JOIN pg_am am ON am.oid = c.relam "
    "WHERE i.indrelid = to_regclass('session_summaries') AND am.amname = 'btree' "
    "AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL"
)
_SQLITE_INDEX_KEYS = sa.text(
    "SELECT l.name, x.seqno, x.name FROM pragma_index_list('session_summaries') AS l, "
    "pragma_index_info(l.name) AS x WHERE l.partial = 0 ORDER BY l.name, x.seqno"
)
_PG_NOT_VALID = sa.text(
    "SELECT conname FROM pg_constraint "
    "WHERE conrelid = to_regclass('session_summaries') AND NOT convalidated ORDER BY conname"
)


def json_kinds(conn: sa.Connection) -> dict[str, str]:
    """``json`` or ``jsonb``: how the two JSON columns the statement reads are stored."""
    kinds = {}
    for key, (table, column) in {
        "enrichment": ("session_summaries", "enrichment"),
        "payload": ("raw_events", "payload"),
    }.items():
        kind = conn.execute(_PG_COLUMN_TYPE, {"table": table, "column": column}).scalar()
        if kind not in ("json", "jsonb"):
            raise RuntimeError(f"{table}.{column} is {kind!r}, not json or jsonb")
        kinds[key] = str(kind)
    return kinds


def existing_index_keys(conn: sa.Connection, dialect: str) -> set[tuple[str, ...]]:
    """The key columns, in order, of each index ``session_summaries`` has."""
    if dialect == "postgresql":
        return {tuple(row[0]) for row in conn.execute(_PG_INDEX_KEYS)}
    keys: dict[str, list[str | None]] = {}
    for name, _seqno, column in conn.execute(_SQLITE_INDEX_KEYS):
        keys.setdefault(name, []).append(column)
    return {tuple(c for c in cols if c) for cols in keys.values() if None not in cols}


def plan(conn: sa.Connection, dialect: str) -> dict[str, Any]:
    """What the run will do on this database, read from the catalog before the clock."""
    present = existing_index_keys(conn, dialect)
    return {
        "json_kinds": json_kinds(conn) if dialect == "postgresql" else {},
        "indexes": {n: c for n, c in INDEXES.items() if tuple(c) not in present},
        "indexes_present": [n for n, c in INDEXES.items() if tuple(c) in present],
        "not_valid": (
            [str(r[0]) for r in conn.execute(_PG_NOT_VALID)] if dialect == "postgresql" else []
        ),
    }


def _product_statements(conn: sa.Connection, dialect: str) -> list[sa.TextClause]:
    """The product's own per-range statement(s), with no range: the whole table."""
    # the product's signatures are changing (JSON types, the rollback record): adapt
    if dialect != "postgresql":
        offline: Any = product_sql.sqlite_offline_backfill
        job = ("snapshot_backfill",) if "job" in inspect.signature(offline).parameters else ()
        return list(offline(*job))
    pg_backfill: Any = product_sql.pg_backfill
    params = inspect.signature(pg_backfill).parameters
    if "json" not in params:
        return [pg_backfill(False, False)]
    from cowrieprocessor.backfill import shape  # the product's, new with the field shape

    extra = {"record": False} if "record" in params else {}
    return [pg_backfill(shape.detect(conn), False, False, **extra)]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def run(url: str, statement: str = "direct") -> dict[str, Any]:
    engine = create_engine_from_url(url, application_name="cowrie-bench-limit")
    dialect = engine.dialect.name
    steps: dict[str, float] = {}
    rows = 0
    with engine.connect() as conn, conn.begin():
        todo = plan(conn, dialect)
        statements = (
            [sa.text(update_statement(dialect, todo["json_kinds"]))]
            if statement == "direct"
            else _product_statements(conn, dialect)
        )
    started = time.monotonic()
    try:
        with engine.connect() as conn:
            t = time.monotonic()
            with conn.begin():
                if dialect == "postgresql":
                    conn.execute(sa.text("SET LOCAL statement_timeout = 0"))
                for stmt in statements:
                    rows += max(conn.execute(stmt).rowcount, 0)
            steps["update"] = time.monotonic() - t

            t = time.monotonic()
            for name, columns in todo["indexes"].items():
                with conn.begin():
                    conn.execute(
                        sa.text(f"CREATE INDEX {name} ON session_summaries ({', '.join(columns)})")
                    )
            steps["indexes"] = time.monotonic() - t

            t = time.monotonic()
            if dialect == "postgresql":
                auto_engine = engine.execution_options(isolation_level="AUTOCOMMIT")
                with auto_engine.connect() as auto:
                    auto.execute(sa.text("VACUUM (ANALYZE) session_summaries"))
                steps["vacuum_analyze"] = time.monotonic() - t
                t = time.monotonic()
                for name in todo["not_valid"]:
                    with conn.begin():
                        conn.execute(
                            sa.text(
                                f"ALTER TABLE session_summaries VALIDATE CONSTRAINT {_quote(name)}"
                            )
                        )
                steps["validate"] = time.monotonic() - t
            else:
                with conn.begin():
                    conn.execute(sa.text("ANALYZE session_summaries"))
                steps["analyze"] = time.monotonic() - t
    finally:
        engine.dispose()
    return {
        "seconds": time.monotonic() - started,
        "rows_updated": rows,
        "steps": steps,
        "statement": statement,
        "json_kinds": todo["json_kinds"],
        "indexes_built": list(todo["indexes"]),
        "indexes_present": todo["indexes_present"],
        "constraints_validated": todo["not_valid"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--statement", choices=("direct", "product"), default="direct")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.url, args.statement)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
