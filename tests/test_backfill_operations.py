"""How the data revision runs: resume, rerun, downgrade, knobs, progress, faults.

Everything goes through the real ``alembic`` command (a subprocess) or the real
engine on a real database; the faults are real (``kill -9``, row locks held by
another transaction, a slow trigger, a terminated backend).
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from cowrieprocessor.backfill import (
    BACKFILL_JOB,
    BackfillError,
    BackfillKnobs,
    BatchReport,
    run_backfill,
)
from cowrieprocessor.backfill.errors import Transient, classify
from cowrieprocessor.backfill.lock import ADVISORY_LOCK_KEY
from cowrieprocessor.backfill.progress import PROGRESS_TABLE
from cowrieprocessor.backfill.rollback_record import RECORD_TABLE
from cowrieprocessor.db.adoption import COVERING_INDEX
from cowrieprocessor.db.engine import create_engine_from_url
from cowrieprocessor.testing.databases import Databases
from cowrieprocessor.testing.ephemeral_pg import find_bindir
from cowrieprocessor.testing.runners import Alembic, cowrie_db, run_alembic
from cowrieprocessor.testing.seed import (
    add_ip,
    add_session,
    at_0002,
    migrate,
    seed_random,
    snapshots,
    version,
)

BACKFILL = "0003_backfill_session_snapshots"


def seeded(url: str, sessions: int = 400, ips: int = 60) -> sa.Engine:
    engine = at_0002(url)
    with engine.begin() as conn:
        seed_random(conn, sessions, ips)
    return engine


@pytest.fixture
def reference(sqlite_databases: Databases) -> Iterator[dict[str, tuple[object, ...]]]:
    """The snapshots of an uninterrupted run over the same seeded data."""
    url = sqlite_databases.new()
    engine = seeded(url, 3000, 300)
    migrate(url, BACKFILL)
    yield snapshots(engine)
    engine.dispose()


def test_rerun_changes_nothing(db_url: str) -> None:
    engine = seeded(db_url)
    migrate(db_url, BACKFILL)
    first = snapshots(engine)
    result = run_backfill(engine, BackfillKnobs(batch_size=37))
    assert result.rows_updated == 0
    assert snapshots(engine) == first
    assert sum(1 for snap in first.values() if snap[0] is not None) > 300
    engine.dispose()


def test_resume_after_kill_matches_an_uninterrupted_run(
    db_url: str, reference: dict[str, tuple[object, ...]]
) -> None:
    engine = seeded(db_url, 3000, 300)
    run = Alembic(db_url, "upgrade", "head", x={"batch_size": "50", "pause_ms": "20"})
    killed = run.kill_after(engine, BACKFILL_JOB, 15, timeout=60)
    assert killed, "the upgrade finished before it could be killed"
    assert run.proc.returncode == -signal.SIGKILL
    assert version(engine) == "0002_snapshot_columns"
    partial = snapshots(engine)
    assert partial != reference  # it really stopped half way

    out = run_alembic(db_url, "upgrade", "head", x={"batch_size": "50"})
    assert out.returncode == 0, out.stderr
    assert "resuming" in out.stderr
    assert snapshots(engine) == reference
    assert version(engine) == "0004_snapshot_indexes"
    engine.dispose()


def test_downgrade_nulls_what_the_backfill_wrote_and_a_new_upgrade_refills(db_url: str) -> None:
    engine = seeded(db_url)
    with engine.begin() as conn:  # a value that predates the backfill survives it
        add_session(conn, "legacy", snapshot_country="NL")
    migrate(db_url, "head")
    filled = snapshots(engine)
    down = run_alembic(db_url, "downgrade", "0002_snapshot_columns", x={"batch_size": "64"})
    assert down.returncode == 0, down.stderr
    assert "Cleared snapshot values" in down.stderr
    cleared = snapshots(engine)
    assert cleared.pop("legacy") == (None, None, "NL", None, None)
    assert all(snap == (None,) * 5 for snap in cleared.values())
    assert not sa.inspect(engine).has_table(PROGRESS_TABLE)
    assert not sa.inspect(engine).has_table(RECORD_TABLE)

    up = run_alembic(db_url, "upgrade", "head")
    assert up.returncode == 0, up.stderr
    refilled = snapshots(engine)
    assert {k: v for k, v in refilled.items() if k != "legacy"} == {
        k: v for k, v in filled.items() if k != "legacy"
    }
    engine.dispose()


@pytest.mark.parametrize(
    ("x", "env", "named"),
    [
        ({"batch_size": "ten"}, {}, "batch_size='ten'"),
        ({"batch_size": "0"}, {}, "batch_size='0'"),
        ({"lock_timeout": "-5"}, {}, "lock_timeout='-5'"),
        ({}, {"COWRIE_BACKFILL_MAX_RETRIES": "1000"}, "max_retries='1000'"),
        ({"batchsize": "10"}, {}, "batchsize"),
        ({}, {"COWRIE_BACKFILL_BATCHSIZE": "10"}, "COWRIE_BACKFILL_BATCHSIZE"),
        ({"status_file": "/no/such/dir/status.json"}, {}, "/no/such/dir"),
    ],
)
def test_bad_knob_fails_before_any_write(
    sqlite_url: str, x: dict[str, str], env: dict[str, str], named: str
) -> None:
    engine = seeded(sqlite_url, 50, 10)
    before = snapshots(engine)
    out = run_alembic(sqlite_url, "upgrade", "head", x=x, env=env)
    assert out.returncode != 0
    assert named in out.stderr
    assert snapshots(engine) == before
    assert version(engine) == "0002_snapshot_columns"
    assert not sa.inspect(engine).has_table(PROGRESS_TABLE)
    engine.dispose()


def test_progress_is_logged_and_the_status_file_is_json(db_url: str, tmp_path: Path) -> None:
    engine = seeded(db_url)
    status = tmp_path / "status.json"
    out = run_alembic(
        db_url,
        "upgrade",
        BACKFILL,
        env={"COWRIE_BACKFILL_STATUS_FILE": str(status)},
        x={"batch_size": "100"},
    )
    assert out.returncode == 0, out.stderr
    log = out.stderr
    assert "400 sessions, 60 IPs in inventory; batch_size=100" in log
    assert f"{BACKFILL_JOB} walk: 400/400 sessions (100.0%)" in log
    if engine.dialect.name == "sqlite":
        assert "Batches: 10, retries: 0" in log  # 4 ranges walked + 1 end, twice
    else:  # by blocks (the default here): the table's one segment in 8 rounds of one
        # batch each; the catch-up takes its list of the few unmatched sessions in one
        assert "Batches: 9, retries: 0" in log, log
        assert "catchup: " in log and "sessions without source_ip to look at again" in log
    assert "unmatched:" in log and "IP not in inventory:" in log
    data = json.loads(status.read_text())
    assert data["phase"] == "done"
    assert data["done"] == data["total"] == 400
    assert {"batch", "percent", "rate", "eta_seconds", "started_at", "updated_at"} <= set(data)
    engine.dispose()


def test_sessions_added_behind_the_walk_are_caught_up(db_url: str) -> None:
    engine = seeded(db_url)
    with engine.begin() as conn:
        add_ip(conn, "198.51.100.7")
    added: list[str] = []

    def insert_behind(report: BatchReport) -> None:
        if report.phase == "walk" and report.batch == 2 and report.hi is not None:
            with engine.begin() as conn:  # a key inside the range just committed
                add_session(conn, "0000000000000", meta_ip="198.51.100.7")
            added.append("0000000000000")

    result = run_backfill(engine, BackfillKnobs(batch_size=50), on_batch=insert_behind)
    assert added
    assert snapshots(engine)["0000000000000"][0] == "198.51.100.7"
    assert result.unmatched_no_ip + result.unmatched_not_in_inventory > 0
    engine.dispose()


def test_dry_run_writes_nothing_and_counts_what_it_would_do(db_url: str) -> None:
    engine = seeded(db_url)
    before = snapshots(engine)
    dry = run_backfill(engine, BackfillKnobs(batch_size=64), dry_run=True)
    assert snapshots(engine) == before
    real = run_backfill(engine, BackfillKnobs(batch_size=64))
    assert dry.rows_updated == real.rows_updated > 0
    assert dry.matched == real.matched
    engine.dispose()


def test_offline_sql_of_the_data_revision(sqlite_url: str) -> None:
    pg = run_alembic("postgresql://u:pw@h/db", "upgrade", "0002_snapshot_columns:head", "--sql")
    assert pg.returncode == 0, pg.stderr
    assert "DO $cowrie$" in pg.stdout and "OFFSET 19999" in pg.stdout
    # planned from statistics, as online: the tables are analyzed before the batches
    analyze = pg.stdout.index("ANALYZE session_summaries;")
    assert analyze < pg.stdout.index("ANALYZE ip_inventory;") < pg.stdout.index("DO $cowrie$")
    assert "CREATE INDEX CONCURRENTLY IF NOT EXISTS" in pg.stdout
    lite = run_alembic(sqlite_url, "upgrade", "0002_snapshot_columns:head", "--sql")
    assert lite.returncode == 0, lite.stderr
    assert "UPDATE session_summaries AS s SET" in lite.stdout
    down = run_alembic("postgresql://u:pw@h/db", "downgrade", "head:0002_snapshot_columns", "--sql")
    assert down.returncode == 0, down.stderr
    assert f"DROP TABLE IF EXISTS {PROGRESS_TABLE}" in down.stdout


def test_offline_data_revision_bounds_lock_waits_as_the_online_run_does() -> None:
    """The reviewed script sets the batches' lock_timeout (the knob) before the DO block
    and the drops, no statement_timeout that would cut the whole DO block, and resets both."""
    for action, span, first in (
        ("upgrade", "0002_snapshot_columns:0003_backfill_session_snapshots", "DO $cowrie$"),
        ("downgrade", "0003_backfill_session_snapshots:0002_snapshot_columns", "DROP TABLE"),
    ):
        script = run_alembic(
            "postgresql://u@h/db", action, span, "--sql", x={"lock_timeout": "750"}
        ).stdout
        lock = script.index("SET lock_timeout = 750;")
        assert lock < script.index("SET statement_timeout = 0;") < script.index(first)
        assert script.index(first) < script.index("RESET lock_timeout;")
        assert script.rindex("DROP TABLE" if action == "downgrade" else "$cowrie$;") < (
            script.index("RESET statement_timeout;")
        )


# --- PostgreSQL faults -------------------------------------------------------------------


@pytest.mark.postgres
def test_lock_contention_stops_with_the_range_named_then_resumes(pg_url: str) -> None:
    engine = seeded(pg_url)
    locker = create_engine_from_url(pg_url).connect()
    with engine.connect() as conn:
        keys = (
            conn.execute(sa.text("SELECT session_id FROM session_summaries ORDER BY session_id"))
            .scalars()
            .all()
        )
    victim = keys[250]
    locker.execute(
        sa.text("SELECT 1 FROM session_summaries WHERE session_id = :k FOR UPDATE"), {"k": victim}
    )  # held until rollback below
    try:
        out = run_alembic(
            pg_url,
            "upgrade",
            "head",
            # the key order, whose ranges the test knows (by blocks: tests/test_blocks.py)
            x={"batch_size": "100", "lock_timeout": "100", "max_retries": "2", "walk_order": "key"},
        )
        assert out.returncode != 0
        assert "lock timeout" in out.stderr
        assert f"session_id range ({keys[199]!r}, {keys[299]!r}]" in out.stderr
        done = snapshots(engine)
        assert any(done[k][0] for k in keys[:200])  # ranges before it stay committed
        assert not any(done[k][0] for k in keys[200:])
        assert version(engine) == "0002_snapshot_columns"
    finally:
        locker.rollback()
        locker.close()
    again = run_alembic(pg_url, "upgrade", "head", x={"batch_size": "100"})
    assert again.returncode == 0, again.stderr
    assert sum(1 for s in snapshots(engine).values() if s[0]) > 300
    engine.dispose()


@pytest.mark.postgres
def test_statement_timeout_splits_the_range_and_completes(pg_url: str) -> None:
    engine = seeded(pg_url, 200, 30)
    with engine.begin() as conn:  # every row written costs 5 ms: 100-row batches time out
        conn.execute(
            sa.text(
                "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN PERFORM pg_sleep(0.005); RETURN NEW; END $$"
            )
        )
        conn.execute(
            sa.text(
                "CREATE TRIGGER slow BEFORE UPDATE ON session_summaries "
                "FOR EACH ROW EXECUTE FUNCTION slow()"
            )
        )
    result = run_backfill(engine, BackfillKnobs(batch_size=100, statement_timeout=150))
    assert result.splits >= 2
    filled = sum(1 for s in snapshots(engine).values() if s[0])
    assert result.rows_updated == filled > 150
    engine.dispose()


@pytest.mark.postgres
def test_lost_connection_is_retried_and_the_run_completes(pg_url: str) -> None:
    engine = seeded(pg_url)
    worker = create_engine_from_url(pg_url, application_name="cowrie-backfill-victim")
    killed = threading.Event()

    def kill_backend(report: BatchReport) -> None:
        if report.batch == 3 and not killed.is_set():
            with engine.connect() as conn:
                n = conn.execute(
                    sa.text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE application_name = 'cowrie-backfill-victim'"
                    )
                ).scalar()
                conn.commit()
            assert n == 1
            killed.set()

    result = run_backfill(worker, BackfillKnobs(batch_size=40), on_batch=kill_backend)
    assert killed.is_set()
    assert result.retries >= 1
    reference = snapshots(engine)
    assert run_backfill(engine, BackfillKnobs()).rows_updated == 0
    assert snapshots(engine) == reference
    worker.dispose()
    engine.dispose()


@pytest.mark.postgres
def test_a_second_concurrent_backfill_is_refused(pg_url: str) -> None:
    engine = seeded(pg_url, 50, 10)
    holder = engine.connect()
    holder.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
    holder.commit()
    try:
        with pytest.raises(BackfillError, match="another backfill or clear is running"):
            run_backfill(engine, BackfillKnobs())
    finally:
        holder.close()
    engine.dispose()


@pytest.mark.postgres
def test_covering_index_serves_the_runbook_query_index_only(pg_url: str) -> None:
    engine = seeded(pg_url, 3000, 100)
    with engine.begin() as conn:
        add_ip(conn, "203.0.113.50", asn=4134, country="CN")
        for n in range(200):
            add_session(conn, f"cn{n:04d}", meta_ip="203.0.113.50")
    migrate(pg_url, "head")
    with engine.connect() as conn:
        # A small table: make the planner show what the index can do, not what is cheapest.
        conn.execute(sa.text("SET enable_seqscan = off"))
        conn.execute(sa.text("SET enable_bitmapscan = off"))
        plan = "\n".join(
            conn.execute(
                sa.text(
                    "EXPLAIN (ANALYZE, COSTS OFF) "
                    "SELECT session_id, snapshot_country, snapshot_asn FROM session_summaries "
                    "WHERE snapshot_country = 'CN' AND snapshot_asn = 4134"
                )
            ).scalars()
        )
    assert f"Index Only Scan using {COVERING_INDEX}" in plan
    assert "Heap Fetches: 0" in plan
    assert "rows=200" in plan
    engine.dispose()


class _DriverError(Exception):
    """What psycopg2 raises: an exception carrying the SQLSTATE as ``pgcode``."""

    def __init__(self, pgcode: str | None) -> None:
        super().__init__(f"SQLSTATE {pgcode}")
        self.pgcode = pgcode


@pytest.mark.parametrize(
    ("dialect", "pgcode", "message", "kind"),
    [
        ("postgresql", "57014", "", Transient.STATEMENT_TIMEOUT),
        ("postgresql", "55P03", "", Transient.LOCK_TIMEOUT),
        ("postgresql", "40P01", "", Transient.DEADLOCK),
        ("postgresql", "08006", "", Transient.CONNECTION_LOST),
        ("postgresql", "23505", "", None),  # a unique violation: retrying cannot help
        ("sqlite", None, "database is locked", Transient.DATABASE_LOCKED),
        ("sqlite", None, "no such column: x", None),
    ],
)
def test_failures_are_classified_by_sqlstate_not_by_message(
    dialect: str, pgcode: str | None, message: str, kind: Transient | None
) -> None:
    orig = _DriverError(pgcode) if dialect == "postgresql" else Exception(message)
    error = sa.exc.ProgrammingError("UPDATE ...", {}, orig)
    assert classify(error, dialect) is kind
    assert classify(ValueError("statement timeout"), dialect) is None
    if kind is not None:  # only a timeout splits a range; only a lost connection reconnects
        assert kind.splits_the_range == (kind is Transient.STATEMENT_TIMEOUT)
        assert kind.needs_a_new_connection == (kind is Transient.CONNECTION_LOST)


@pytest.mark.parametrize("then", ["nothing", "cowrie-db backfill"])
def test_a_database_backfilled_before_the_record_existed_is_cleared_whole(
    sqlite_url: str, then: str
) -> None:
    engine = seeded(sqlite_url, 120, 20)
    with engine.begin() as conn:
        add_session(conn, "legacy", snapshot_country="NL")
    migrate(sqlite_url, "head")
    with engine.begin() as conn:  # as the first release left it: no rollback record
        conn.execute(sa.text(f"DROP TABLE {RECORD_TABLE}"))
    if then != "nothing":  # a new run records from now on, but cannot vouch for the past
        out = cowrie_db("--db", sqlite_url, "backfill")
        assert out.returncode == 0, out.stderr
    down = run_alembic(sqlite_url, "downgrade", "0002_snapshot_columns")
    assert down.returncode == 0, down.stderr
    assert "no complete rollback record" in down.stderr
    assert all(snap == (None,) * 5 for snap in snapshots(engine).values())
    engine.dispose()


@pytest.mark.postgres
def test_offline_sql_run_by_psql_gives_the_same_data_and_its_downgrade_undoes_it(
    pg_url: str, pg_databases: Databases
) -> None:
    """What a DBA reviews is what runs: the --sql output through psql, against the online
    upgrade of an identical database."""
    psql = (find_bindir() / "pg_ctl").resolve().parent / "psql"  # psql ships with the server
    assert psql.exists(), f"no psql beside the server binaries ({psql.parent})"
    offline_url = pg_databases.new()  # dropped with pg_url after the test
    online, offline = seeded(pg_url), seeded(offline_url)
    with online.begin() as conn, offline.begin() as conn2:  # loader values before the deploy
        for c in (conn, conn2):
            c.execute(
                sa.text(
                    "UPDATE session_summaries SET snapshot_asn = 7 WHERE ctid IN "
                    "(SELECT ctid FROM session_summaries ORDER BY session_id LIMIT 5)"
                )
            )
    assert run_alembic(pg_url, "upgrade", "head").returncode == 0
    before = snapshots(offline)

    def psql_run(*alembic_args: str) -> None:
        rendered = run_alembic(offline_url, *alembic_args, "--sql")
        assert rendered.returncode == 0, rendered.stderr
        out = subprocess.run(
            [
                str(psql),
                "-v",
                "ON_ERROR_STOP=1",
                "-X",
                "-q",
                "-d",
                offline_url.replace("+psycopg2", ""),
            ],
            input=rendered.stdout,
            capture_output=True,
            text=True,
            check=False,
        )
        assert out.returncode == 0, out.stderr[-2000:]

    psql_run("upgrade", "0002_snapshot_columns:head")
    assert snapshots(offline) == snapshots(online)
    psql_run("downgrade", "head:0002_snapshot_columns")
    assert snapshots(offline) == before  # the loader's values survive, ours are gone
    online.dispose()
    offline.dispose()
