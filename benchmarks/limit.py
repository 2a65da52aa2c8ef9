"""The limit: the same work done the fastest way the database allows, with no safety.

One unbatched ``UPDATE ... FROM ip_inventory`` over the whole table, with the
product's semantics (canonical IP from ``source_ip``, else the enrichment JSON, else
the earliest ``raw_events`` row; only NULL columns filled; the same country and IP-type
rules), then what revision 0004 does after the data is in, done the quick way:

* PostgreSQL: plain ``CREATE INDEX`` (not ``CONCURRENTLY``), ``VACUUM (ANALYZE)``, and
  ``VALIDATE CONSTRAINT`` of the two constraints that 0002 added ``NOT VALID``;
* SQLite: the same ``CREATE INDEX`` statements and ``ANALYZE``.

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
INDEXES: dict[str, tuple[str, ...]] = _0004.INDEXES
CONSTRAINTS: tuple[str, ...] = tuple(_0004.CONSTRAINTS)

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
        CASE WHEN jsonb_typeof(s.enrichment -> 'session_metadata' -> 'source_ip') = 'string'
             THEN NULLIF(lower(btrim(s.enrichment -> 'session_metadata' ->> 'source_ip')), '')
        END,
        (SELECT lower(btrim(e.payload ->> 'src_ip')) FROM raw_events e
          WHERE e.session_id = s.session_id
            AND jsonb_typeof(e.payload -> 'src_ip') = 'string'
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


def update_statement(dialect: str) -> str:
    """The one statement: resolve the IP in the join condition, fill NULL columns."""
    if dialect == "postgresql":
        country, ip_type, ip = PG_COUNTRY, PG_IP_TYPE, PG_IP
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


def _product_statements(dialect: str) -> list[sa.TextClause]:
    """The product's own per-range statement(s), with no range: the whole table."""
    if dialect == "postgresql":
        return [product_sql.pg_backfill(False, False)]
    return product_sql.sqlite_offline_backfill()


def run(url: str, statement: str = "direct") -> dict[str, Any]:
    engine = create_engine_from_url(url, application_name="cowrie-bench-limit")
    dialect = engine.dialect.name
    steps: dict[str, float] = {}
    rows = 0
    started = time.monotonic()
    try:
        with engine.connect() as conn:
            t = time.monotonic()
            with conn.begin():
                if dialect == "postgresql":
                    conn.execute(sa.text("SET LOCAL statement_timeout = 0"))
                if statement == "direct":
                    rows = conn.execute(sa.text(update_statement(dialect))).rowcount
                else:
                    for stmt in _product_statements(dialect):
                        rows += max(conn.execute(stmt).rowcount, 0)
            steps["update"] = time.monotonic() - t

            t = time.monotonic()
            for name, columns in INDEXES.items():
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
                for name in CONSTRAINTS:
                    with conn.begin():
                        conn.execute(
                            sa.text(f"ALTER TABLE session_summaries VALIDATE CONSTRAINT {name}")
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
