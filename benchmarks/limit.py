"""The limit: the same work done the fastest way the database allows, with no safety.

One unbatched ``UPDATE ... FROM ip_inventory`` over the whole table, with the
product's semantics (canonical IP from ``source_ip``, else
``enrichment.session_metadata.source_ip``, else ``enrichment.dshield.ip.number``, else
the earliest ``raw_events`` row; only NULL columns filled; the same country rule, and
the IP type from ``ip_types`` else the inventory's ``spur.client.types`` by priority),
then what revision 0004 does after the data is in, done the quick way:

* PostgreSQL: plain ``CREATE INDEX`` (not ``CONCURRENTLY``) of those of 0004's indexes
  for which no equivalent index exists yet, ``VACUUM (ANALYZE)``, and
  ``VALIDATE CONSTRAINT`` of the country CHECK and the ``source_ip`` foreign key when
  they are ``NOT VALID``;
* SQLite: the same ``CREATE INDEX`` statements and ``ANALYZE``.

What the run will do is read from the catalog once, before the clock starts, by the
product's own catalog readers (:func:`cowrieprocessor.backfill.json_storage.detect` for the
JSON types, :mod:`cowrieprocessor.db.adoption` for equivalent indexes and constraints;
they are not the SQL being measured), so the same code serves both shapes of database
(benchmarks/run.py ``--shapes``): ours at ``0002_snapshot_columns`` (``jsonb``, no
snapshot index yet, the two constraints of 0002 ``NOT VALID``: all five indexes built,
both constraints validated) and the field's, built by upstream's schema code
(``session_summaries.enrichment`` and ``raw_events.payload`` ``json``, read with
``json_typeof``; the snapshot indexes of the ``idx_`` family present, and maintained by
the UPDATE as they are by the product's; nothing ``NOT VALID``).

No batches, no progress table, no retries, no lock or statement timeouts, no rollback
record: one transaction holds a row lock on every session until it commits. That is
what a production system cannot afford, and why it is only the yardstick.

The statement is written here on purpose, not taken from the product: the benchmark's
"same data" digest then holds two independent spellings of the rules against each
other. It resolves the IP inside the join condition (one pass over the table, a hash
join with ``ip_inventory`` on PostgreSQL). Against the product's own per-range
statement run without a range (``--statement product``), at 1.68M sessions on the
benchmark machine, before the dshield and spur rules: PostgreSQL 85-97 s against
119-150 s, SQLite 33 s against 33 s. It is the faster (or equal) of the two, so it is
the limit.

Run on its own: ``python -m benchmarks.limit URL``; prints one JSON line of step times.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import sqlalchemy as sa

from cowrieprocessor.backfill import BACKFILL_JOB, json_storage
from cowrieprocessor.backfill import sql as product_sql
from cowrieprocessor.backfill.json_storage import JsonTypes
from cowrieprocessor.db import adoption, partitioned_ddl
from cowrieprocessor.db.ddl import Statement
from cowrieprocessor.db.engine import create_engine_from_url

# Revision 0004's indexes: the limit builds exactly those that the product's index
# revision would build, and validates what it validates.
INDEXES: dict[str, tuple[str, ...]] = dict(adoption.SNAPSHOT_INDEXES)

# snapshot_ip_type's fallback: a list of spur types is ranked by this, then list order.
# Spelled here again on purpose (see the module doc); the digest catches a divergence.
SPUR_PRIORITY = ("VPN", "TOR", "PROXY", "DATACENTER", "RESIDENTIAL", "MOBILE")
_RANK = "CASE {value} " + " ".join(f"WHEN '{t}' THEN {n}" for n, t in enumerate(SPUR_PRIORITY))
_RANK += f" ELSE {len(SPUR_PRIORITY)} END"

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
# {typeof_*}: json_typeof or jsonb_typeof of the column at that path; {elements}: the
# same for *_array_elements (spelled by json_storage.JsonColumn for the type the catalog reports).
PG_IP_TYPE = """COALESCE(NULLIF(i.ip_types[1], ''),
        CASE {typeof_types}
            WHEN 'string' THEN NULLIF(i.enrichment -> 'spur' -> 'client' ->> 'types', '')
            WHEN 'array' THEN (
                SELECT t.v #>> '{{}}' FROM {elements} WITH ORDINALITY AS t(v, n)
                WHERE {kind}_typeof(t.v) = 'string' AND t.v #>> '{{}}' <> ''
                ORDER BY {rank}, t.n
                LIMIT 1)
        END)"""
PG_IP = """COALESCE(
        s.source_ip,
        CASE WHEN {typeof_meta} = 'string'
             THEN NULLIF(lower(btrim(s.enrichment -> 'session_metadata' ->> 'source_ip')), '')
        END,
        CASE WHEN {typeof_dshield} = 'string'
             THEN NULLIF(lower(btrim(s.enrichment -> 'dshield' -> 'ip' ->> 'number')), '')
        END,
        (SELECT lower(btrim(e.payload ->> 'src_ip')) FROM raw_events e
          WHERE e.session_id = s.session_id
            AND {typeof_src} = 'string'
            AND btrim(e.payload ->> 'src_ip') <> ''
          ORDER BY e.event_timestamp ASC NULLS LAST, e.id
          LIMIT 1))"""

SQLITE_COUNTRY = (
    "(CASE WHEN i.geo_country GLOB '[A-Z][A-Z]' AND i.geo_country <> 'XX' THEN i.geo_country END)"
)
SQLITE_IP_TYPE = """COALESCE(
        CASE WHEN json_valid(i.ip_types) THEN
            CASE WHEN json_type(i.ip_types, '$[0]') = 'text'
                 THEN NULLIF(json_extract(i.ip_types, '$[0]'), '') END END,
        CASE WHEN json_valid(i.enrichment) THEN
            CASE json_type(i.enrichment, '$.spur.client.types')
                WHEN 'text' THEN NULLIF(json_extract(i.enrichment, '$.spur.client.types'), '')
                WHEN 'array' THEN (
                    SELECT t.value FROM json_each(i.enrichment, '$.spur.client.types') AS t
                    WHERE t.type = 'text' AND t.value <> ''
                    ORDER BY {rank}, t.key
                    LIMIT 1)
            END
        END)"""
SQLITE_IP = """COALESCE(
        s.source_ip,
        CASE WHEN json_valid(s.enrichment) THEN
            COALESCE(
                CASE WHEN json_type(s.enrichment, '$.session_metadata.source_ip') = 'text'
                     THEN NULLIF(lower(trim(json_extract(s.enrichment,
                                                         '$.session_metadata.source_ip'))), '')
                END,
                CASE WHEN json_type(s.enrichment, '$.dshield.ip.number') = 'text'
                     THEN NULLIF(lower(trim(json_extract(s.enrichment,
                                                         '$.dshield.ip.number'))), '')
                END)
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


def update_statement(dialect: str, json_types: JsonTypes = json_storage.JSONB) -> str:
    """The one statement: resolve the IP in the join condition, fill NULL columns.

    ``json_types`` (PostgreSQL): how the three JSON columns are stored, as
    :func:`cowrieprocessor.backfill.json_storage.detect` reads them (default: all ``jsonb``).
    """
    if dialect == "postgresql":
        se, ev, inv = json_types.columns()
        ip = PG_IP.format(
            typeof_meta=se.typeof("-> 'session_metadata' -> 'source_ip'"),
            typeof_dshield=se.typeof("-> 'dshield' -> 'ip' -> 'number'"),
            typeof_src=ev.typeof("-> 'src_ip'"),
        )
        types = "-> 'spur' -> 'client' -> 'types'"
        ip_type = PG_IP_TYPE.format(
            typeof_types=inv.typeof(types),
            elements=inv.elements(types),
            kind=inv.kind,
            rank=_RANK.format(value="t.v #>> '{}'"),
        )
        country = PG_COUNTRY
    else:
        ip_type = SQLITE_IP_TYPE.format(rank=_RANK.format(value="t.value"))
        country, ip = SQLITE_COUNTRY, SQLITE_IP
    fill = {"country": country, "ip_type": ip_type}
    return (  # fixed fragments of this file only; no value is ever formatted in
        f"UPDATE session_summaries AS s SET {_SET.format(**fill)}\n"  # noqa: S608
        f"FROM ip_inventory AS i\n"
        f"WHERE i.ip_address = {ip}\n"
        f"  AND {product_sql.NEEDS_SNAPSHOT}\n"
        f"  AND {_WOULD_CHANGE.format(**fill)}"
    )


def plan(conn: sa.Connection) -> dict[str, Any]:
    """What the run will do on this database, read from the catalog before the clock."""
    json_types = json_storage.detect(conn)
    present = {n: adoption.find_index(conn, c) for n, c in INDEXES.items()}
    constraints = (
        [adoption.find_source_ip_fk(conn), adoption.find_country_check(conn)]
        if conn.dialect.name == "postgresql"
        else []
    )
    return {
        "json_types": json_types,
        "json_kinds": (
            {
                f"{table}.{column}": col.kind
                for (table, column), col in zip(
                    json_storage.JSON_COLUMNS, json_types.columns(), strict=True
                )
            }
            if conn.dialect.name == "postgresql"
            else {}
        ),
        "indexes": {n: c for n, c in INDEXES.items() if present[n] is None},
        "indexes_present": [n for n, found in present.items() if found is not None],
        "not_valid": [c.name for c in constraints if c is not None and not c.valid],
        # a partitioned table: the foreign key is NOT VALID on each partition (0002),
        # validated there and then added to the table, as revision 0004 does
        "leaf_keys": [
            (k.table, k.name)
            for k in (partitioned_ddl.leaf_keys(conn) if conn.dialect.name == "postgresql" else [])
            if not k.valid
        ],
    }


def _product_statements(conn: sa.Connection, json_types: JsonTypes) -> list[sa.TextClause]:
    """The product's own per-range statement(s), with no range: the whole table."""
    if conn.dialect.name != "postgresql":
        return product_sql.sqlite_offline_backfill(BACKFILL_JOB)
    return [product_sql.pg_backfill(json_types, False, False, keep_record=False)]


def run(url: str, statement: str = "direct") -> dict[str, Any]:
    engine = create_engine_from_url(url, application_name="cowrie-bench-limit")
    dialect = engine.dialect.name
    steps: dict[str, float] = {}
    rows = 0
    with engine.connect() as conn, conn.begin():
        todo = plan(conn)
        statements = (
            [sa.text(update_statement(dialect, todo["json_types"]))]
            if statement == "direct"
            else _product_statements(conn, todo["json_types"])
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
                    cols = ", ".join("{}" for _ in columns)
                    create = f"CREATE INDEX {{}} ON session_summaries ({cols})"
                    conn.execute(Statement(create, name, *columns))
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
                            Statement("ALTER TABLE session_summaries VALIDATE CONSTRAINT {}", name)
                        )
                for leaf, name in todo["leaf_keys"]:
                    with conn.begin():
                        conn.execute(Statement("ALTER TABLE {} VALIDATE CONSTRAINT {}", leaf, name))
                if todo["leaf_keys"]:
                    with conn.begin():
                        key = todo["leaf_keys"][0][1]
                        target = partitioned_ddl.FK_TARGET
                        conn.execute(
                            Statement(partitioned_ddl.ADD_KEY, "session_summaries", key, *target)
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
