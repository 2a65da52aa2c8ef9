"""The databases in the field: built by cowrieprocessor's own schema code (json columns,
its CHECK, FK and two index families, ``schema_state`` 17, no ``alembic_version``,
sessions with loader-written snapshots). The operator's whole path on one: check, dry
run, ``upgrade head`` with no stamp, verify, the downgrades, the loader afterwards, and
kill -9 at random moments of the upgrade and the downgrade."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa

from cowrieprocessor.backfill import BACKFILL_JOB, CLEAR_JOB
from cowrieprocessor.backfill.progress import PROGRESS_TABLE
from cowrieprocessor.backfill.rollback_record import RECORD_TABLE
from cowrieprocessor.db.adoption import COVERING_INDEX, SNAPSHOT_INDEXES
from cowrieprocessor.db.engine import create_engine_from_url
from cowrieprocessor.db.ledger import LEDGER_TABLE
from cowrieprocessor.testing import field_schema
from cowrieprocessor.testing.oracle import current_snapshots, expected_snapshots
from cowrieprocessor.testing.runners import Alembic, cowrie_db, cowrie_db_here, run_alembic

pytestmark = pytest.mark.postgres

IP_TYPE_INDEX = next(n for n, cols in SNAPSHOT_INDEXES.items() if cols == ("snapshot_ip_type",))
OUR_TABLES = {PROGRESS_TABLE, RECORD_TABLE, LEDGER_TABLE, "alembic_version"}


@dataclass
class Field:
    url: str
    engine: sa.Engine
    seed: field_schema.FieldSeed

    def snapshots(self) -> dict[str, Any]:
        with self.engine.connect() as conn:
            return current_snapshots(conn)

    def expected(self) -> dict[str, Any]:
        with self.engine.connect() as conn:
            return expected_snapshots(conn)

    def catalog(self) -> dict[str, Any]:
        """Every index, constraint, column and table of the schema, as PostgreSQL shows it."""
        with self.engine.connect() as conn:
            indexes: dict[str, str] = dict(
                conn.execute(
                    sa.text(
                        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
                    )
                ).all()
            )
            constraints = {
                name: (definition, valid)
                for name, definition, valid in conn.execute(
                    sa.text(
                        "SELECT conname, pg_get_constraintdef(oid), convalidated "
                        "FROM pg_constraint WHERE connamespace = 'public'::regnamespace"
                    )
                )
            }
            columns: dict[str, str] = dict(
                conn.execute(
                    sa.text(
                        "SELECT table_name || '.' || column_name, data_type "
                        "FROM information_schema.columns WHERE table_schema = 'public'"
                    )
                ).all()
            )
        return {"indexes": indexes, "constraints": constraints, "columns": columns}

    def inventory_ip(self) -> str:
        with self.engine.connect() as conn:
            return str(
                conn.execute(
                    sa.text(
                        "SELECT ip_address FROM ip_inventory WHERE current_asn IS NOT NULL "
                        "ORDER BY ip_address LIMIT 1"
                    )
                ).scalar_one()
            )

    def version(self) -> str | None:
        with self.engine.connect() as conn:
            if not sa.inspect(conn).has_table("alembic_version"):
                return None
            return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def without_ours(catalog: dict[str, Any]) -> dict[str, Any]:
    """The catalog minus our own bookkeeping tables (and their indexes and keys)."""

    def ours(name: str) -> bool:
        return any(name.startswith(t) for t in OUR_TABLES)

    return {
        "indexes": {k: v for k, v in catalog["indexes"].items() if not ours(k)},
        "constraints": {k: v for k, v in catalog["constraints"].items() if not ours(k)},
        "columns": {k: v for k, v in catalog["columns"].items() if not ours(k)},
    }


def build(url: str, **options: Any) -> Field:
    engine = create_engine_from_url(url)
    with engine.begin() as conn:
        field_schema.build_postgres(conn, **options)
        if options.get("legacy_ip_types_column"):  # the seed writes snapshot_ip_type
            seed = _legacy_seed(conn)
        else:
            seed = field_schema.seed_postgres(conn)
    return Field(url, engine, seed)


def _legacy_seed(conn: sa.Connection) -> field_schema.FieldSeed:
    """One IP whose type is only in spur, one session that names it, one already done."""
    conn.execute(
        sa.text(
            "INSERT INTO asn_inventory (asn_number, first_seen, last_seen) "
            "VALUES (4134, now(), now())"
        )
    )
    conn.execute(
        sa.text(
            "INSERT INTO ip_inventory (ip_address, current_asn, first_seen, last_seen, "
            "enrichment, enrichment_updated_at) VALUES ('198.51.100.9', 4134, now(), now(), "
            "CAST(:enrichment AS jsonb), now())"
        ),
        {"enrichment": '{"maxmind": {"country": "CN"}, "spur": {"client": {"types": ["TOR"]}}}'},
    )
    for sid, source_ip in (("a1", None), ("a2", "198.51.100.9")):
        conn.execute(
            sa.text(
                "INSERT INTO session_summaries (session_id, enrichment, source_ip) "
                "VALUES (:sid, CAST(:enrichment AS json), :ip)"
            ),
            {
                "sid": sid,
                "enrichment": '{"session_metadata": {"source_ip": "198.51.100.9"}}',
                "ip": source_ip,
            },
        )
    return field_schema.FieldSeed(sessions=2, loader_written=("a2",))


@pytest.fixture(params=["both", "idx"])
def field(request: pytest.FixtureRequest, pg_url: str) -> Iterator[Field]:
    db = build(pg_url, index_families=request.param)
    try:
        yield db
    finally:
        db.engine.dispose()


def test_the_operators_whole_path_adopts_and_rolls_back_exactly(field: Field) -> None:
    before = field.snapshots()
    assert any(before[sid] != (None,) * 5 for sid in field.seed.loader_written)
    catalog_before = field.catalog()
    expected = field.expected()
    assert expected != before  # there is something to fill

    check = cowrie_db("--db", field.url, "check")
    assert check.returncode == 0, check.stderr
    assert "built by cowrieprocessor's schema code, version 17" in check.stdout
    assert "snapshot_country_iso" in check.stdout and "fk_session_source_ip" in check.stdout
    reuses = next(line for line in check.stdout.splitlines() if line.startswith("Reuses:"))
    assert "_source_ip (source_ip)" in reuses and "_snapshot_asn (snapshot_asn)" in reuses
    assert f"index {COVERING_INDEX}" in check.stdout
    assert "IP resolved from:" in check.stdout and "dshield" in check.stdout

    dry = cowrie_db("--db", field.url, "backfill", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert field.snapshots() == before

    up = run_alembic(field.url, "upgrade", "head", x={"batch_size": "37"})
    assert up.returncode == 0, up.stderr
    assert "built by cowrieprocessor's schema code, version 17: adopting" in up.stderr
    assert field.version() == "0004_snapshot_indexes"
    filled = field.snapshots()
    assert filled == expected
    for sid in field.seed.loader_written:  # the loader's values are never overwritten
        assert all(b is None or b == f for b, f in zip(before[sid], filled[sid], strict=True))

    # nothing equivalent to what existed was added: only the indexes the field lacked
    added = set(field.catalog()["indexes"]) - set(catalog_before["indexes"])
    added = {name for name in added if not name.startswith(tuple(OUR_TABLES))}
    lacking = {COVERING_INDEX} | (
        {IP_TYPE_INDEX} if IP_TYPE_INDEX not in catalog_before["indexes"] else set()
    )
    assert added == lacking
    assert without_ours(field.catalog())["constraints"] == catalog_before["constraints"]

    # the seed holds every kind of unmatched session on purpose: 83.5% is all there is
    verify = cowrie_db("--db", field.url, "verify", "--min-coverage", "80")
    assert verify.returncode == 0, verify.stdout + verify.stderr

    down = run_alembic(field.url, "downgrade", "0002_snapshot_columns", x={"batch_size": "41"})
    assert down.returncode == 0, down.stderr
    assert field.snapshots() == before  # loader values intact, backfilled ones gone
    assert without_ours(field.catalog()) == catalog_before  # pre-existing indexes intact

    again = run_alembic(field.url, "upgrade", "head")
    assert again.returncode == 0, again.stderr
    assert field.snapshots() == filled  # identical to the first upgrade

    to_baseline = run_alembic(field.url, "downgrade", "0001_baseline")
    assert to_baseline.returncode == 0, to_baseline.stderr
    assert "keeps what it adopted" in to_baseline.stderr
    assert without_ours(field.catalog()) == catalog_before
    assert field.snapshots() == before

    to_base = run_alembic(field.url, "downgrade", "base")
    assert to_base.returncode == 0, to_base.stderr
    assert without_ours(field.catalog()) == catalog_before
    left = set(sa.inspect(field.engine).get_table_names()) & OUR_TABLES
    assert left == {"alembic_version"}  # Alembic keeps its (now empty) table; ours are gone
    with field.engine.begin() as conn:  # the loader goes on as before
        field_schema.loader_upsert(conn, "after-rollback", field.inventory_ip())
        field_schema.loader_upsert(conn, field.seed.loader_written[0], field.inventory_ip())
    assert field.snapshots()["after-rollback"][0] == field.inventory_ip()
    assert field.snapshots()[field.seed.loader_written[0]] == before[field.seed.loader_written[0]]


def test_loader_writes_after_the_upgrade_survive_the_downgrade(pg_url: str) -> None:
    db = build(pg_url)
    try:
        assert run_alembic(db.url, "upgrade", "head").returncode == 0
        with db.engine.begin() as conn:
            field_schema.loader_upsert(conn, "new-after-upgrade", db.inventory_ip())
        written = db.snapshots()["new-after-upgrade"]
        assert written[0] == db.inventory_ip()
        down = run_alembic(db.url, "downgrade", "0002_snapshot_columns")
        assert down.returncode == 0, down.stderr
        assert db.snapshots()["new-after-upgrade"] == written
    finally:
        db.engine.dispose()


def test_legacy_snapshot_ip_types_column_is_left_alone_and_reported(pg_url: str) -> None:
    db = build(pg_url, legacy_ip_types_column=True)
    try:
        check = cowrie_db("--db", db.url, "check")
        assert check.returncode == 0, check.stderr
        assert "Legacy:     column session_summaries.snapshot_ip_types" in check.stdout
        assert "column snapshot_ip_type" in check.stdout  # in what the upgrade creates
        up = run_alembic(db.url, "upgrade", "head")
        assert up.returncode == 0, up.stderr
        columns = {c["name"] for c in sa.inspect(db.engine).get_columns("session_summaries")}
        assert {"snapshot_ip_types", "snapshot_ip_type"} <= columns
        assert db.snapshots() == db.expected()
        assert db.snapshots()["a1"][:4] == ("198.51.100.9", 4134, "CN", "TOR")
        down = run_alembic(db.url, "downgrade", "0001_baseline")
        assert down.returncode == 0, down.stderr
        columns = {c["name"] for c in sa.inspect(db.engine).get_columns("session_summaries")}
        assert "snapshot_ip_types" in columns and "snapshot_ip_type" not in columns
    finally:
        db.engine.dispose()


def test_an_unusable_column_type_is_refused_before_any_change(pg_url: str) -> None:
    db = build(pg_url)
    try:
        with db.engine.begin() as conn:
            conn.execute(sa.text("DROP INDEX idx_session_snapshot_asn"))
            conn.execute(sa.text("DROP INDEX ix_session_summaries_snapshot_asn"))
            conn.execute(
                sa.text("ALTER TABLE session_summaries ALTER COLUMN snapshot_asn TYPE text")
            )
        catalog, snaps = db.catalog(), db.snapshots()
        up = run_alembic(db.url, "upgrade", "head")
        assert up.returncode != 0
        assert "session_summaries.snapshot_asn is TEXT, which cannot serve as integer" in up.stderr
        assert "Nothing was changed" in up.stderr
        assert db.catalog() == catalog and db.snapshots() == snaps and db.version() is None
        check = cowrie_db_here("--db", db.url, "check")
        assert check.returncode == 2 and "snapshot_asn" in check.stdout
    finally:
        db.engine.dispose()


@pytest.mark.parametrize("fresh", [False, True], ids=["upgraded", "created"])
def test_a_sqlite_database_of_the_schema_code_is_refused_by_name(
    sqlite_url: str, fresh: bool
) -> None:
    engine = create_engine_from_url(sqlite_url)
    try:
        with engine.begin() as conn:
            field_schema.build_sqlite(conn, fresh=fresh)
        tables = set(sa.inspect(engine).get_table_names())
        up = run_alembic(sqlite_url, "upgrade", "head")
        assert up.returncode != 0
        assert "cannot adopt this database" in up.stderr
        assert "ip_inventory" in up.stderr
        assert set(sa.inspect(engine).get_table_names()) == tables  # nothing was changed
        check = cowrie_db_here("--db", sqlite_url, "check")
        assert check.returncode == 2 and "not adoptable" in check.stdout
    finally:
        engine.dispose()


# --- kill -9 -----------------------------------------------------------------------------


KILL_KNOBS = {"batch_size": "9", "pause_ms": "20"}


def test_kill_9_during_upgrade_and_downgrade_then_rerun_gives_zero_differences(
    pg_url: str,
) -> None:
    rng = random.Random(17)
    db = build(pg_url)
    try:
        before, expected = db.snapshots(), db.expected()
        kills = 0
        for trial in range(3):
            run = Alembic(db.url, "upgrade", "head", x=KILL_KNOBS)
            if run.kill_after(db.engine, BACKFILL_JOB, rng.randint(2, 30)):
                kills += 1
            up = run_alembic(db.url, "upgrade", "head")
            assert up.returncode == 0, up.stderr
            assert db.snapshots() == expected, f"trial {trial}: upgrade after kill -9"

            run = Alembic(db.url, "downgrade", "0002_snapshot_columns", x=KILL_KNOBS)
            if run.kill_after(db.engine, CLEAR_JOB, rng.randint(1, 20)):
                kills += 1
                partial = db.snapshots()
                assert partial != expected and partial != before  # it stopped half way
            down = run_alembic(db.url, "downgrade", "0002_snapshot_columns")
            assert down.returncode == 0, down.stderr
            assert db.snapshots() == before, f"trial {trial}: downgrade after kill -9"
        assert kills >= 4  # most kills landed mid-run
    finally:
        db.engine.dispose()
