"""Hostile names never reach SQL unquoted, and never make a revision drop what it did not
create (issue #21).

Names come into the revisions' SQL from the catalog (an adopted constraint or index,
whatever it is called), from the partition tree (a leaf's name) and from
``cowrie_schema_ledger`` (what a downgrade reads back). A role that may rename one
object or write one ledger row must not get a statement of its own run by the
migration's role. Each property drives names with quotes, semicolons, ``--``, spaces,
``%``, ``:``, mixed case, multi-byte characters and 63 bytes through 0002 and 0004 and
their downgrades, on a plain and on a hash-partitioned ``session_summaries``, and
compares the catalog after each step with the one the same steps give with tame names:
the two must be the same catalog, up to the names. No payload may leave an object of
its own (the ``CREATE TABLE pwned()`` one would add a table).

Every example runs the real migrations on a real server: each starts from a copy
(``CREATE DATABASE ... TEMPLATE``) of a database built once, and the examples are few
and derandomized, so the run is the same in CI.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cowrieprocessor.db import partitions
from cowrieprocessor.db.adoption import CK_NAME, FK_NAME
from cowrieprocessor.db.engine import create_engine_from_url
from cowrieprocessor.db.ledger import LEDGER_TABLE
from cowrieprocessor.testing.databases import Databases, drop_database
from cowrieprocessor.testing.partitioned import HASH, partition_tables
from cowrieprocessor.testing.runners import alembic_config
from cowrieprocessor.testing.seed import migrate

PAYLOAD = '"; CREATE TABLE pwned(); --'
TAME = ("tame_a", "tame_b", "tame_c")
EXAMPLES = settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# --- hostile names -----------------------------------------------------------------------

PIECES = st.sampled_from(
    [
        *('"', "'", ";", "--", " ", "%", "%s", ":x", "\\", ".", "(", ")", "/*", "$1", "Ab", "Z"),
        *("é", "漢字", "🦀", "drop table pwned", "\t"),
    ]
)


def _fit(name: str) -> str:
    """``name`` cut to PostgreSQL's 63 bytes on a character boundary."""
    return name.encode()[:63].decode(errors="ignore")


def _to_63_bytes(name: str) -> str:
    """``name`` padded with two-byte characters (then one ASCII) to exactly 63 bytes."""
    name = _fit(name)
    while len(name.encode()) < 62:
        name += "é"
    return name + "x" * (63 - len(name.encode()))


_raw = st.lists(PIECES | st.text(min_size=1, max_size=4), min_size=1, max_size=10).map(
    lambda parts: _fit("".join(parts))
)
# NUL is the one character an identifier cannot hold
HOSTILE = (_raw | _raw.map(_to_63_bytes)).filter(lambda n: "\x00" not in n and n != "")


def hostile_names(n: int) -> st.SearchStrategy[tuple[str, ...]]:
    return st.lists(HOSTILE, min_size=n, max_size=n, unique_by=str.lower).map(tuple)


# --- databases ---------------------------------------------------------------------------


def run_ddl(engine: sa.Engine, template: str, *names: str) -> None:
    """Fixed SQL with ``%I`` for each name, quoted by PostgreSQL's ``format()`` (not by
    the code under test), sent as it is (no driver parameter handling)."""
    with engine.connect() as conn:
        statement = conn.execute(
            sa.text("SELECT format(:template, VARIADIC CAST(:names AS text[]))"),
            {"template": template, "names": list(names)},
        ).scalar_one()
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute(statement)
        cursor.close()
        raw.commit()
    finally:
        raw.close()


class Bases:
    """Databases migrated to 0001 once (plain, and hash-partitioned), copied per example."""

    def __init__(self, dbs: Databases) -> None:
        self.dbs = dbs
        self.plain = dbs.new()
        migrate(self.plain, "0001_baseline")
        self.partitioned = dbs.new()
        migrate(self.partitioned, "0001_baseline")
        engine = create_engine_from_url(self.partitioned)
        with engine.begin() as conn:
            partition_tables(conn, HASH, partitions=2)
        engine.dispose()
        self.copies: list[str] = []

    def copy(self, base: str) -> str:
        url = self.dbs.clone(base)
        self.copies.append(url)
        return url

    def drop_copies(self) -> None:
        assert self.dbs.admin is not None
        with self.dbs.admin.connect() as conn:
            for url in self.copies:
                drop_database(conn, str(sa.make_url(url).database))
        self.dbs.created = [u for u in self.dbs.created if u not in self.copies]
        self.copies.clear()


@pytest.fixture(scope="module")
def bases(pg_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bases]:
    dbs = Databases("postgresql", tmp_path_factory.mktemp("hostile"), pg_server_url)
    try:
        yield Bases(dbs)
    finally:
        dbs.close()


@pytest.fixture
def fresh(bases: Bases) -> Iterator[Bases]:
    """The bases, with every copy an example made dropped after the test."""
    try:
        yield bases
    finally:
        bases.drop_copies()


# --- the catalog -------------------------------------------------------------------------

_RELATIONS = sa.text(
    """SELECT 'relation', c.relname, c.relkind::text FROM pg_class c
       WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'S')"""
)
_COLUMNS = sa.text(
    """SELECT 'column', t.relname, a.attname, format_type(a.atttypid, a.atttypmod)
       FROM pg_attribute a JOIN pg_class t ON t.oid = a.attrelid
       WHERE t.relnamespace = 'public'::regnamespace AND t.relkind IN ('r', 'p')
         AND a.attnum > 0 AND NOT a.attisdropped"""
)
# an index attached to a parent's is named by it: its own name is a digest of the
# partition's, which differs between the tame and the hostile run by design
_INDEXES = sa.text(
    """SELECT 'index', t.relname,
              COALESCE('(attached to ' || p.relname || ')', i.relname),
              x.indisvalid, x.indisunique,
              ARRAY(SELECT a.attname FROM unnest(x.indkey) WITH ORDINALITY AS k(attnum, n)
                    JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum
                    ORDER BY k.n)
       FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
       JOIN pg_class t ON t.oid = x.indrelid
       LEFT JOIN pg_inherits h ON h.inhrelid = i.oid
       LEFT JOIN pg_class p ON p.oid = h.inhparent
       WHERE t.relnamespace = 'public'::regnamespace"""
)
_CONSTRAINTS = sa.text(
    """SELECT 'constraint', t.relname, c.conname, c.contype::text, c.convalidated,
              pc.conname AS parent
       FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid
       LEFT JOIN pg_constraint pc ON pc.oid = c.conparentid
       WHERE t.relnamespace = 'public'::regnamespace"""
)

Catalog = frozenset[tuple[Any, ...]]


def catalog(url: str) -> Catalog:
    """Every table, column, index (validity, key, attachment) and constraint (validity,
    parent) in the public schema: what a migration may change."""
    engine = create_engine_from_url(url)
    try:
        with engine.connect() as conn:
            rows = [
                tuple(tuple(v) if isinstance(v, list) else v for v in row)
                for query in (_RELATIONS, _COLUMNS, _INDEXES, _CONSTRAINTS)
                for row in conn.execute(query).all()
            ]
    finally:
        engine.dispose()
    return frozenset(rows)


def renamed(found: Catalog, names: dict[str, str]) -> Catalog:
    """``found`` with each name that is a key of ``names`` replaced by its value."""

    def one(value: Any) -> Any:
        if isinstance(value, tuple):
            return tuple(one(v) for v in value)
        if isinstance(value, str):
            for old, new in names.items():
                if value == old:
                    return new
                if value == f"(attached to {old})":
                    return f"(attached to {new})"
        return value

    return frozenset(one(row) for row in found)


def assert_no_foreign_objects(found: Catalog) -> None:
    tables = {row[1] for row in found if row[0] == "relation"}
    assert "pwned" not in tables, "a payload in a name was run as SQL"


class Reference:
    """The catalogs a scenario gives with tame names, computed once per scenario."""

    cache: dict[str, list[Catalog]] = {}  # noqa: RUF012 - a per-session memo

    @classmethod
    def of(cls, key: str, run: Callable[[tuple[str, ...]], list[Catalog]]) -> list[Catalog]:
        if key not in cls.cache:
            cls.cache[key] = run(TAME)
        return cls.cache[key]


def same_up_to_names(
    got: list[Catalog], tame: list[Catalog], names: tuple[str, ...], steps: list[str]
) -> None:
    mapping = dict(zip(TAME, names, strict=True))
    for step, found, want in zip(steps, got, tame, strict=True):
        assert_no_foreign_objects(found)
        want = renamed(want, mapping)
        assert found == want, (
            f"after {step}: unexpected {sorted(found - want, key=repr)}; "
            f"missing {sorted(want - found, key=repr)}"
        )


# --- 0002 adopts, 0004 validates, the downgrades keep: hostile constraint and index names --

ADOPT_STEPS = ["upgrade head", "downgrade 0001_baseline"]


def adopted_run(bases: Bases, names: tuple[str, ...]) -> list[Catalog]:
    """A database whose schema code made the snapshot columns, the FK, the CHECK (both
    NOT VALID) and an index on snapshot_asn under ``names``; then head, then 0001."""
    fk, ck, ix = names
    url = bases.copy(bases.plain)
    engine = create_engine_from_url(url)
    run_ddl(
        engine,
        "ALTER TABLE session_summaries ADD COLUMN source_ip varchar(45), "
        "ADD COLUMN snapshot_asn integer, ADD COLUMN snapshot_country varchar(2), "
        "ADD COLUMN snapshot_ip_type text, ADD COLUMN enrichment_at timestamptz, "
        "ADD CONSTRAINT %I FOREIGN KEY (source_ip) REFERENCES ip_inventory (ip_address) "
        "NOT VALID, ADD CONSTRAINT %I CHECK (snapshot_country ~ '^[A-Z]{2}$') NOT VALID",
        fk,
        ck,
    )
    run_ddl(engine, "CREATE INDEX %I ON session_summaries (snapshot_asn)", ix)
    engine.dispose()
    found = []
    migrate(url, "head")
    found.append(catalog(url))
    migrate_down(url, "0001_baseline")
    found.append(catalog(url))
    return found


def migrate_down(url: str, target: str) -> None:
    command.downgrade(alembic_config(url), target)


@pytest.mark.postgres
@EXAMPLES
@given(names=hostile_names(3))
@example(names=(PAYLOAD, "x'; DROP TABLE ip_inventory; --", 'Ab" CASCADE; --'))
@example(names=("é" * 31 + "x", "漢" * 21, "%s:x %%(a)s"))
def test_adopted_constraints_and_index_with_hostile_names(
    fresh: Bases, names: tuple[str, ...]
) -> None:
    tame = Reference.of("adopted", lambda n: adopted_run(fresh, n))
    got = adopted_run(fresh, names)
    fk, ck, ix = names
    at_head = {row[2]: row for row in got[0] if row[0] == "constraint"}
    assert at_head[fk][4] and at_head[ck][4], "the adopted constraints were not validated"
    assert FK_NAME not in at_head and CK_NAME not in at_head, "a duplicate was added"
    for step in got:  # adopted: reused, never duplicated, kept by the downgrade
        indexes = {row[2] for row in step if row[0] == "index"}
        assert ix in indexes and "ix_session_summaries_snapshot_asn" not in indexes
    same_up_to_names(got, tame, names, ADOPT_STEPS)


# --- a hash-partitioned table: hostile leaf names, a hostile leaf key ---------------------

PARTITION_STEPS = [
    "upgrade 0002",
    "upgrade head",
    "downgrade 0003",
    "downgrade 0001_baseline",
]


def partitioned_run(bases: Bases, names: tuple[str, ...]) -> list[Catalog]:
    """Leaf p0 renamed to names[0] and leaf p1 to names[1] at 0001; after 0002 the foreign
    key of the first renamed to names[2]; then head, 0003, 0001."""
    leaf0, leaf1, key = names
    url = bases.copy(bases.partitioned)
    engine = create_engine_from_url(url)
    run_ddl(engine, "ALTER TABLE session_summaries_p0 RENAME TO %I", leaf0)
    run_ddl(engine, "ALTER TABLE session_summaries_p1 RENAME TO %I", leaf1)
    before = catalog(url)
    found = []
    migrate(url, "0002_snapshot_columns")
    found.append(catalog(url))
    run_ddl(engine, "ALTER TABLE %I RENAME CONSTRAINT %I TO %I", leaf0, FK_NAME, key)
    engine.dispose()
    migrate(url, "head")
    found.append(catalog(url))
    migrate_down(url, "0003_backfill_session_snapshots")
    found.append(catalog(url))
    migrate_down(url, "0001_baseline")
    found.append(catalog(url))
    assert found[-1] == before, "the downgrades did not give back the catalog of before"
    return found


@pytest.mark.postgres
@EXAMPLES
@given(names=hostile_names(3))
@example(names=(PAYLOAD, "Session_Summaries_P1; --", "k\"'; DROP TABLE ip_inventory; --"))
@example(names=(_to_63_bytes("漢"), _to_63_bytes("Ab%s"), _to_63_bytes('"')))
def test_partition_and_leaf_key_with_hostile_names(fresh: Bases, names: tuple[str, ...]) -> None:
    tame = Reference.of("partitioned", lambda n: partitioned_run(fresh, n))
    got = partitioned_run(fresh, names)
    leaf0, leaf1, key = names
    at_head = got[1]
    # every leaf: each snapshot index valid and attached, the key validated and attached
    for leaf in (leaf0, leaf1):
        attached = [r for r in at_head if r[:2] == ("index", leaf) and r[2].startswith("(att")]
        assert len(attached) >= 5 and all(r[3] for r in attached), leaf
    keys = {r[1]: r for r in at_head if r[0] == "constraint" and r[3] == "f" and r[5]}
    assert keys[leaf0][2] == key and keys[leaf0][4], "the renamed leaf key is not validated"
    same_up_to_names(got, tame, names, PARTITION_STEPS)


@pytest.mark.postgres
def test_a_partition_named_like_a_bind_parameter(fresh: Bases) -> None:
    names = (":x; --", "a :offset %s %%", "(\\:z)")
    tame = Reference.of("partitioned", lambda n: partitioned_run(fresh, n))
    same_up_to_names(partitioned_run(fresh, names), tame, names, PARTITION_STEPS)


# --- the ledger: names a downgrade reads back ---------------------------------------------


def planted_rows(names: tuple[str, ...]) -> list[dict[str, str]]:
    """Ledger rows a downgrade reads: hostile names, and real objects 0002/0004 did not
    create (an index and a column of 0001, a key of ip_inventory) marked as created."""
    a, b, c = names
    rows = [
        ("0004_snapshot_indexes", "index", a),
        ("0004_snapshot_indexes", "index", "ix_ip_inventory_current_asn"),
        ("0004_snapshot_indexes", "index", "pk_session_summaries"),
        ("0002_snapshot_columns", "constraint", b),
        ("0002_snapshot_columns", "constraint", "pk_ip_inventory"),
        ("0002_snapshot_columns", "column", c),
        ("0002_snapshot_columns", "column", "risk_score"),
    ]
    return [{"revision": r, "kind": k, "name": n, "action": "created"} for r, k, n in rows]


def plant(url: str, names: tuple[str, ...]) -> None:
    engine = create_engine_from_url(url)
    ledger = sa.table(
        LEDGER_TABLE,
        *(sa.column(c) for c in ("revision", "kind", "name", "action")),
    )
    with engine.begin() as conn:
        conn.execute(sa.insert(ledger), planted_rows(names))
    engine.dispose()


def sqlite_catalog(url: str) -> Catalog:
    """Every table with its columns, indexes, keys and CHECKs, as SQLite reports them (a
    downgrade that rebuilds a table rewrites its CREATE text, not its catalog)."""
    engine = create_engine_from_url(url)
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            found: set[tuple[Any, ...]] = set()
            for table in inspector.get_table_names():
                found.add(("relation", table))
                for c in inspector.get_columns(table):
                    found.add(("column", table, c["name"], str(c["type"]), c["nullable"]))
                for i in inspector.get_indexes(table):
                    found.add(("index", table, i["name"], tuple(i["column_names"])))
                for f in inspector.get_foreign_keys(table):
                    found.add(("fk", table, f["name"], tuple(f["constrained_columns"])))
                for k in inspector.get_check_constraints(table):
                    found.add(("check", table, k["name"], k["sqltext"]))
            return frozenset(found)
    finally:
        engine.dispose()


def planted_then_down_to_0001(
    url: str, names: tuple[str, ...], read: Callable[[str], Catalog], at_0001: Catalog
) -> None:
    """Up to head, plant the ledger rows, down to 0001: the catalog of 0001 again, and
    nothing the payloads would have made."""
    migrate(url, "head")
    plant(url, names)
    migrate_down(url, "0001_baseline")
    after = read(url)
    assert_no_foreign_objects(after)
    assert after == at_0001, (
        f"unexpected {sorted(after - at_0001, key=repr)}; missing "
        f"{sorted(at_0001 - after, key=repr)}"
    )


@pytest.mark.postgres
@EXAMPLES
@given(names=hostile_names(3))
@example(names=(PAYLOAD, PAYLOAD + " ", "risk_score; --"))
def test_hostile_ledger_rows_are_neither_run_nor_dropped_on_postgres(
    fresh: Bases, names: tuple[str, ...]
) -> None:
    url = fresh.copy(fresh.plain)
    at_0001 = catalog(url)
    planted_then_down_to_0001(url, names, catalog, at_0001)


@settings(max_examples=6, deadline=None, derandomize=True, database=None)
@given(names=hostile_names(3))
@example(names=(PAYLOAD, PAYLOAD + " ", "risk_score; --"))
def test_hostile_ledger_rows_are_neither_run_nor_dropped_on_sqlite(
    tmp_path_factory: pytest.TempPathFactory, names: tuple[str, ...]
) -> None:
    folder: Path = tmp_path_factory.mktemp("sqlite")
    url = f"sqlite:///{folder / 'db.sqlite'}"
    migrate(url, "0001_baseline")
    planted_then_down_to_0001(url, names, sqlite_catalog, sqlite_catalog(url))


# --- derived names ------------------------------------------------------------------------


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(name=HOSTILE.map(lambda n: n * 3), leaf=HOSTILE)
def test_a_partition_index_name_fits_in_63_bytes_whole_characters(name: str, leaf: str) -> None:
    """PostgreSQL cuts a longer name at 63 bytes, maybe inside a character, and two cut
    names may then clash: child_name cuts it itself, by bytes, on a character boundary."""
    child = partitions.child_name(name, leaf)
    assert len(child.encode()) <= 63
    head, _, digest = child.rpartition("_")
    assert name.startswith(head) and len(digest) == 10
    assert len(name.encode()) <= 52 or len(head.encode()) > 52 - 4  # at most one char short
    if name.isascii():  # as it always was: existing indexes keep their names
        assert head == name[:52]
