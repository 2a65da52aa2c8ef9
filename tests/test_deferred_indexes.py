"""``defer_indexes=on`` (PostgreSQL): the indexes on the snapshot columns are dropped for
the walk and built again after it, exactly; a kill -9 leaves them listed in the ledger
and the next run (or the way down) builds them; what cannot be rebuilt exactly stays;
a forged ledger row stays a name; SQLite, a partitioned table and a bad value are
refused by name before anything is written."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from cowrieprocessor.backfill import BACKFILL_JOB, BackfillKnobs, KnobError, run_backfill
from cowrieprocessor.backfill.deferred_indexes import DEFERRED, REVISION
from cowrieprocessor.backfill.progress import PROGRESS_TABLE
from cowrieprocessor.db.engine import create_engine_from_url
from cowrieprocessor.db.ledger import LEDGER_TABLE, ledger_table
from cowrieprocessor.testing import field_schema
from cowrieprocessor.testing.databases import Databases
from cowrieprocessor.testing.oracle import current_snapshots, expected_snapshots
from cowrieprocessor.testing.partitioned import HASH
from cowrieprocessor.testing.runners import Alembic, cowrie_db, run_alembic
from cowrieprocessor.testing.seed import at_0002, partitioned_at_0002, seed_random, snapshots

pytestmark = pytest.mark.postgres

UPSTREAM = ("idx_session_source_ip", "idx_session_snapshot_asn", "idx_session_snapshot_country")
# Indexes on a snapshot column that a name and key columns cannot rebuild: they stay.
KEPT = {
    "kept_partial": "CREATE INDEX kept_partial ON session_summaries (source_ip) "
    "WHERE source_ip IS NOT NULL",
    "kept_desc": "CREATE INDEX kept_desc ON session_summaries (enrichment_at DESC)",
    "kept_ops": "CREATE INDEX kept_ops ON session_summaries (source_ip varchar_pattern_ops)",
    "kept_c": 'CREATE INDEX kept_c ON session_summaries (snapshot_country COLLATE "C")',
    "kept_unique": "CREATE UNIQUE INDEX kept_unique ON session_summaries "
    "(session_id, snapshot_asn)",
}


KILL_KNOBS = {"defer_indexes": "on", "batch_size": "9", "pause_ms": "30"}


@pytest.fixture
def field(pg_url: str) -> Iterator[sa.Engine]:
    """A database of upstream's schema code (both index families), seeded."""
    engine = create_engine_from_url(pg_url)
    with engine.begin() as conn:
        field_schema.build_postgres(conn)
        field_schema.seed_postgres(conn)
    try:
        yield engine
    finally:
        engine.dispose()


def indexes(engine: sa.Engine) -> dict[str, str]:
    """Every index of session_summaries: name -> definition (valid ones only)."""
    with engine.connect() as conn:
        return dict(
            conn.execute(
                sa.text(
                    "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i "
                    "JOIN pg_class c ON c.oid = i.indexrelid "
                    "WHERE i.indrelid = 'session_summaries'::regclass AND i.indisvalid"
                )
            ).all()
        )


def deferred_rows(engine: sa.Engine) -> dict[str, str | None]:
    """The ledger's rows of indexes deferred: name -> key columns."""
    t = ledger_table
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(LEDGER_TABLE):
            return {}
        where = (t.c.revision == REVISION) & (t.c.action == DEFERRED)
        rows = conn.execute(sa.select(t.c.name, t.c.detail).where(where)).all()
        return {name: detail for name, detail in rows}


def field_snapshots(engine: sa.Engine) -> tuple[dict[str, Any], dict[str, Any]]:
    with engine.connect() as conn:
        return current_snapshots(conn), expected_snapshots(conn)


def test_they_are_dropped_for_the_walk_and_rebuilt_exactly(field: sa.Engine, pg_url: str) -> None:
    with field.begin() as conn:
        for statement in KEPT.values():
            conn.execute(sa.text(statement))
    before = indexes(field)
    _now, expected = field_snapshots(field)
    check = cowrie_db("--db", pg_url, "check")
    assert check.returncode == 0, check.stderr
    listed = next(
        line for line in check.stdout.splitlines() if line.startswith("Snapshot indexes:")
    )
    assert "idx_session_source_ip (source_ip)" in listed
    assert "kept_partial (source_ip) [stays: partial]" in listed
    assert "defer_indexes=on drops the others for the walk" in listed
    dry = cowrie_db("--db", pg_url, "backfill", "--dry-run", "--defer-indexes", "on")
    assert dry.returncode == 0, dry.stderr
    assert "a dry run drops no index (defer_indexes=on)" in dry.stderr
    assert indexes(field) == before
    on_snapshot_columns = {n for n, d in before.items() if "snapshot_" in d or "source_ip" in d}
    deferred = on_snapshot_columns - set(KEPT)
    assert set(UPSTREAM) <= deferred and len(deferred) == 7  # both families

    up = run_alembic(
        pg_url,
        "upgrade",
        "0003_backfill_session_snapshots",
        x={"defer_indexes": "on", "batch_size": "37"},
    )
    assert up.returncode == 0, up.stderr
    dropped = next(line for line in up.stderr.splitlines() if "defer_indexes: dropping" in line)
    assert all(name in dropped for name in deferred)
    assert not any(name in dropped for name in KEPT)
    assert "index kept_partial (source_ip) stays (partial)" in up.stderr
    assert "index kept_desc (enrichment_at) stays (DESC or NULLS FIRST)" in up.stderr
    own = "stays (an operator class or collation of its own)"
    assert f"index kept_ops (source_ip) {own}" in up.stderr
    assert f"index kept_c (snapshot_country) {own}" in up.stderr
    assert "index kept_unique (session_id, snapshot_asn) stays (unique)" in up.stderr
    assert up.stderr.count("defer_indexes: rebuilt") == len(deferred)

    assert indexes(field) == before  # the same names and definitions, all valid
    assert deferred_rows(field) == {}
    now, _expected = field_snapshots(field)
    assert now == expected


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_kill_leaves_them_in_the_ledger_and_the_rerun_builds_them(
    field: sa.Engine, pg_url: str, workers: str
) -> None:
    url = pg_url
    before = indexes(field)
    _now, expected = field_snapshots(field)
    run = Alembic(url, "upgrade", "head", x={**KILL_KNOBS, "workers": workers})
    assert run.kill_after(field, BACKFILL_JOB, 5), run.output
    listed = deferred_rows(field)
    assert set(UPSTREAM) <= set(listed)
    assert listed["idx_session_snapshot_asn"] == "snapshot_asn"
    assert not set(listed) & set(indexes(field))  # dropped while the walk ran
    check = cowrie_db("--db", url, "check")
    assert check.returncode == 0, check.stderr
    line = next(line for line in check.stdout.splitlines() if line.startswith("Deferred now:"))
    assert all(name in line for name in listed)

    # a build cut short leaves an INVALID index under the name: it is built again
    with field.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        with pytest.raises(sa.exc.IntegrityError):
            conn.execute(
                sa.text(
                    "CREATE UNIQUE INDEX CONCURRENTLY idx_session_snapshot_asn "
                    "ON session_summaries ((1))"
                )
            )

    again = run_alembic(url, "upgrade", "head")  # without the knob: what is listed is built
    assert again.returncode == 0, again.stderr
    assert "dropped by an earlier run that did not finish; built again" in again.stderr
    assert "defer_indexes: rebuilt idx_session_snapshot_asn (snapshot_asn)" in again.stderr
    after = indexes(field)
    assert {n: after[n] for n in before} == before
    assert deferred_rows(field) == {}
    now, _expected = field_snapshots(field)
    assert now == expected


def test_the_way_down_builds_what_a_killed_upgrade_left_deferred(
    field: sa.Engine, pg_url: str
) -> None:
    url = pg_url
    before = indexes(field)
    run = Alembic(url, "upgrade", "head", x=KILL_KNOBS)
    assert run.kill_after(field, BACKFILL_JOB, 3), run.output
    assert deferred_rows(field)

    down = run_alembic(url, "downgrade", "0001_baseline")  # stamped at 0002: 0002's way down
    assert down.returncode == 0, down.stderr
    assert indexes(field) == before
    assert deferred_rows(field) == {}


def test_a_forged_ledger_row_stays_a_name(field: sa.Engine, pg_url: str) -> None:
    url = pg_url
    assert run_alembic(url, "upgrade", "0002_snapshot_columns").returncode == 0
    hostile = 'x"; DROP TABLE ip_inventory; --'
    with field.begin() as conn:
        for name, detail in ((hostile, "source_ip"), ("elsewhere", "password_hash")):
            row = {"kind": "index", "name": name, "action": DEFERRED, "detail": detail}
            conn.execute(ledger_table.insert().values(revision=REVISION, **row))
    up = run_alembic(url, "upgrade", "head")
    assert up.returncode == 0, up.stderr
    assert "index 'elsewhere' as deferred on columns 'password_hash'" in up.stderr
    built = indexes(field)
    assert hostile in built and "(source_ip)" in built[hostile]  # a name, nothing else
    assert "elsewhere" not in built
    with field.connect() as conn:
        assert sa.inspect(conn).has_table("ip_inventory")


def test_sqlite_partitions_and_bad_values_are_refused_before_any_write(
    sqlite_databases: Databases, pg_databases: Databases
) -> None:
    url = sqlite_databases.new()
    engine = at_0002(url)
    with engine.begin() as conn:
        seed_random(conn, 50, 10)
    before = snapshots(engine)
    out = run_alembic(url, "upgrade", "head", x={"defer_indexes": "on"})
    assert out.returncode == 2, out.stderr
    assert "defer_indexes=on: SQLite" in out.stderr and "Traceback" not in out.stderr
    offline = run_alembic(
        url, "upgrade", "0002_snapshot_columns:head", "--sql", x={"defer_indexes": "on"}
    )
    assert offline.returncode == 2, offline.stderr
    assert "defer_indexes=on: the offline script (--sql)" in offline.stderr
    bad = cowrie_db("backfill", "--db", url, "--defer-indexes", "maybe")
    assert bad.returncode == 2, bad.stderr
    assert "defer_indexes='maybe' (from -x defer_indexes) is not one of: off, on" in bad.stderr
    assert snapshots(engine) == before
    with engine.connect() as conn:
        assert not sa.inspect(conn).has_table(PROGRESS_TABLE)
    engine.dispose()

    partitioned = partitioned_at_0002(pg_databases.new(), HASH)
    with partitioned.begin() as conn:
        seed_random(conn, 50, 10)
    with pytest.raises(KnobError, match="defer_indexes=on: session_summaries is partitioned"):
        run_backfill(partitioned, BackfillKnobs.from_sources({"defer_indexes": "on"}, {}))
    with partitioned.connect() as conn:
        assert not sa.inspect(conn).has_table(PROGRESS_TABLE)
    partitioned.dispose()
