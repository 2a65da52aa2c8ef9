"""``cowrie-db`` as an operator runs it: a real subprocess on a real database, on both
dialects; exit codes, ``--json`` shapes, masked passwords, the dry run's promise. The
refusals that end before any work (bad flags, a database it cannot use) run its
``main`` in this process instead (``cowrie_db_here``: the same output and exit status,
without a new process's start)."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from cowrieprocessor.backfill import BACKFILL_JOB
from cowrieprocessor.backfill.progress import DONE, PROGRESS_TABLE
from cowrieprocessor.backfill.rollback_record import RECORD_TABLE
from cowrieprocessor.settings import PROJECT_ROOT
from cowrieprocessor.testing.runners import (
    COWRIE_DB,
    alembic_argv,
    batches_committed,
    child_env,
    cowrie_db,
    cowrie_db_here,
    run_to_end,
)
from cowrieprocessor.testing.seed import at_0002, migrate, seed_random, snapshots

PASSWORD = "s3cr:t@p/w%d"
PASSWORD_IN_URL = "s3cr%3At%40p%2Fw%25d"


def with_password(url: str) -> str:
    """The same database, reached with a password full of URL-special characters."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return url
    return parsed.set(password=PASSWORD).render_as_string(hide_password=False)


def assert_no_password(out: subprocess.CompletedProcess[str]) -> None:
    for secret in (PASSWORD, PASSWORD_IN_URL, "s3cr:t"):
        assert secret not in out.stdout + out.stderr


def fingerprint(engine: sa.Engine) -> tuple[dict[str, int], str]:
    """Row counts of every table and a checksum of the five snapshot columns."""
    with engine.connect() as conn:
        counts = {
            t: int(conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one())
            for t in sa.inspect(conn).get_table_names()
        }
    digest = hashlib.sha256(
        json.dumps(sorted(snapshots(engine).items()), default=str).encode()
    ).hexdigest()
    return counts, digest


@pytest.fixture
def seeded_url(db_url: str) -> str:
    engine = at_0002(db_url)
    with engine.begin() as conn:
        seed_random(conn, 600, 80)
    engine.dispose()
    return with_password(db_url)


def test_help_and_version() -> None:
    assert cowrie_db("--help").returncode == 0
    version = cowrie_db("--version")
    assert version.returncode == 0 and "cowrie-db" in version.stdout


def test_check_reports_schema_counts_and_estimate(seeded_url: str) -> None:
    out = cowrie_db("--db", seeded_url, "check")
    assert out.returncode == 0, out.stderr
    assert "Revision:   0002_snapshot_columns; head 0004_snapshot_indexes" in out.stdout
    assert "Pending:    0003_backfill_session_snapshots -> 0004_snapshot_indexes" in out.stdout
    assert "Sessions:   600" in out.stdout
    assert "Needing snapshots:     600" in out.stdout
    assert "IPs in inventory:      80" in out.stdout
    assert "Estimated backfill:" in out.stdout
    if seeded_url.startswith("postgresql"):  # as the backfill will walk (test_blocks.py)
        assert (
            "Walk order: by blocks of the table, 8 rounds a segment "
            "(no index has a snapshot column; walk_order=auto)"
        ) in out.stdout
    else:
        assert "Walk order:" not in out.stdout  # SQLite walks its rowid order
    assert_no_password(out)


def test_check_fails_clearly_when_the_database_cannot_be_reached() -> None:
    out = cowrie_db("--db", f"postgresql://cowrie:{PASSWORD_IN_URL}@127.0.0.1:1/none", "check")
    assert out.returncode == 2
    assert "cannot connect to postgresql://cowrie:***@127.0.0.1:1/none" in out.stderr
    # the cause's hint, as `alembic` gives it, and where the URL comes from
    assert "check the host and port, and that the server is running" in out.stderr
    assert "(--db URL or COWRIE_DB_URL)" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert_no_password(out)


def test_check_refuses_a_database_it_cannot_adopt(sqlite_url: str) -> None:
    engine = sa.create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE session_summaries (session_id TEXT PRIMARY KEY)"))
    engine.dispose()
    out = cowrie_db_here("--db", sqlite_url, "check")
    assert out.returncode == 2
    assert "not adoptable" in out.stdout
    assert "asn_inventory" in out.stdout


def test_dry_run_leaves_the_database_byte_for_byte_unchanged(seeded_url: str) -> None:
    engine = sa.create_engine(seeded_url)
    before = fingerprint(engine)
    out = cowrie_db("--db", seeded_url, "backfill", "--dry-run", "--batch-size", "100")
    assert out.returncode == 0, out.stderr
    assert fingerprint(engine) == before
    assert PROGRESS_TABLE not in before[0]
    assert "DRY RUN - Batch 1: would update" in out.stderr
    assert "IPs found in inventory)" in out.stderr
    assert "Backfill dry run complete: would update" in out.stderr
    says_order = "a dry run walks by session_id; the backfill walks by blocks here"
    assert (says_order in out.stderr) == seeded_url.startswith("postgresql")
    assert_no_password(out)
    engine.dispose()


def test_backfill_then_verify_and_status(seeded_url: str) -> None:
    out = cowrie_db("--db", seeded_url, "backfill", "--batch-size", "128", "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["rows_updated"] > 500
    assert_no_password(out)

    # verify: the index revision has not run yet, so "at head" and the scan fail
    pending = cowrie_db("--db", seeded_url, "verify", "--json")
    assert pending.returncode == 1
    report = json.loads(pending.stdout)
    assert report["matched_missing_snapshot"] == 0
    assert any("schema not at head" in f for f in report["failures"])

    url = seeded_url
    migrate(url, "head")
    ok = cowrie_db("--db", url, "verify")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "[PASS] matched sessions still lacking snapshots: 0" in ok.stdout
    assert "Verification passed" in ok.stdout
    assert_no_password(ok)

    strict = cowrie_db("--db", url, "verify", "--min-coverage", "100", "--json")
    assert strict.returncode == 1
    data = json.loads(strict.stdout)
    assert data["ok"] is False
    assert data["failures"] == [
        f"coverage {data['coverage_percent']:.2f}% is below the minimum 100%"
    ]
    assert {
        "coverage_percent",
        "index_only_scan",
        "constraints",
        "sample",
        "plan",
        "asn_divergent",
        "country_divergent",
    } <= set(data)

    status = cowrie_db("--db", url, "status", "--json")
    assert status.returncode == 0, status.stderr
    jobs = json.loads(status.stdout)["jobs"]
    assert [(j["job"], j["phase"], j["percent"]) for j in jobs] == [(BACKFILL_JOB, DONE, 100.0)]
    assert_no_password(status)


def test_backfill_needs_the_snapshot_columns(sqlite_url: str) -> None:
    migrate(sqlite_url, "0001_baseline")
    out = cowrie_db_here("--db", sqlite_url, "backfill")
    assert out.returncode == 2
    assert "run `alembic upgrade 0002_snapshot_columns` first" in out.stderr


def test_bad_flag_values_are_rejected_before_any_write(seeded_url: str) -> None:
    engine = sa.create_engine(seeded_url)
    before = fingerprint(engine)
    for args in (["--batch-size", "0"], ["--lock-timeout", "soon"], ["--status-dir", "/nope"]):
        out = cowrie_db_here("--db", seeded_url, "backfill", *args)
        assert out.returncode == 2, args
        assert "error:" in out.stderr
    assert fingerprint(engine) == before
    engine.dispose()


def test_status_file_and_status_dir(seeded_url: str, tmp_path: Path) -> None:
    out = cowrie_db("--db", seeded_url, "backfill", "--status-dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    data: dict[str, Any] = json.loads((tmp_path / f"{BACKFILL_JOB}.json").read_text())
    assert data["phase"] == DONE and data["percent"] == 100.0
    assert PASSWORD not in json.dumps(data)
    status = cowrie_db("--db", seeded_url, "status", "--status-file", str(tmp_path))
    assert status.returncode == 0
    assert '"phase": "done"' in status.stdout


def test_ctrl_c_stops_after_the_batch_and_a_rerun_resumes(seeded_url: str) -> None:
    proc = subprocess.Popen(
        [str(COWRIE_DB), "--db", seeded_url, "backfill", "--batch-size", "20", "--pause-ms", "100"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=PROJECT_ROOT,
        env=child_env(),
    )
    engine = sa.create_engine(seeded_url)
    # Ctrl-C once a batch is committed (the handler is installed by then), never on a
    # deadline: a signal sent early would test something else
    deadline = time.monotonic() + 60
    while not batches_committed(engine, BACKFILL_JOB):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no batch committed (exit {proc.wait()}): {proc.communicate()}")
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    try:
        stdout, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # it must stop after the batch: say where it hung
        proc.kill()
        raise AssertionError(f"still running 60 s after Ctrl-C: {proc.communicate()}") from None
    assert proc.returncode == 130, stderr
    assert "Resume with the same command" in stdout
    partial = snapshots(engine)
    assert any(s[0] is None for s in partial.values())

    again = cowrie_db("--db", seeded_url, "backfill", "--batch-size", "20")
    assert again.returncode == 0, again.stderr
    assert "resuming walk" in again.stderr
    assert run_is_complete(engine)
    engine.dispose()


def run_is_complete(engine: sa.Engine) -> bool:
    with engine.connect() as conn:
        return (
            conn.execute(
                sa.text(f"SELECT phase FROM {PROGRESS_TABLE} WHERE job = :job"),
                {"job": BACKFILL_JOB},
            ).scalar()
            == DONE
        )


def test_demo_data_refuses_a_database_that_has_sessions(seeded_url: str) -> None:
    out = cowrie_db_here("--db", seeded_url, "demo-data", "--sessions", "10", "--ips", "5")
    assert out.returncode == 2
    assert "600" in out.stderr
    assert_no_password(out)


def test_clear_all_asks_first_then_clears_every_value_and_the_record(seeded_url: str) -> None:
    assert cowrie_db("--db", seeded_url, "backfill").returncode == 0
    engine = sa.create_engine(seeded_url)
    filled = snapshots(engine)
    assert any(s[0] for s in filled.values())

    vague = cowrie_db("--db", seeded_url, "clear")
    assert vague.returncode == 2 and "--all" in vague.stderr
    unconfirmed = cowrie_db("--db", seeded_url, "clear", "--all")  # stdin is not a terminal
    assert unconfirmed.returncode == 2 and "add --yes" in unconfirmed.stderr
    assert snapshots(engine) == filled

    done = cowrie_db("--db", seeded_url, "clear", "--all", "--yes", "--batch-size", "50")
    assert done.returncode == 0, done.stderr
    assert "Cleared snapshot values in" in done.stdout
    assert all(s == (None,) * 5 for s in snapshots(engine).values())
    with engine.connect() as conn:
        left = conn.execute(sa.text(f"SELECT count(*) FROM {RECORD_TABLE}")).scalar_one()
    assert left == 0  # nothing the record names is left to undo
    again = cowrie_db("--db", seeded_url, "backfill")
    assert again.returncode == 0
    assert snapshots(engine) == filled
    engine.dispose()


def test_the_commands_start_without_the_orm() -> None:
    """Each `cowrie-db` and each `alembic upgrade` is a new process: they do not import
    the models, which bring in SQLAlchemy's ORM (about 0.07 s of a 0.7 s start)."""
    probe = (
        "import sys, cowrieprocessor.cli.entry, cowrieprocessor.report; "
        "print('sqlalchemy.orm' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_alembic_upgrade_starts_without_the_orm(sqlite_url: str) -> None:
    """migrations/env.py gives the models' metadata only to what compares with them."""
    argv = [
        sys.executable,
        "-X",
        "importtime",
        "-m",
        "alembic",
        *alembic_argv(sqlite_url, "upgrade", "head")[1:],
    ]
    done = run_to_end(argv)
    assert done.returncode == 0, done.stderr
    imported = {
        line.rsplit("|", 1)[-1].strip()
        for line in done.stderr.splitlines()
        if "import time:" in line
    }
    assert "alembic.context" in imported and "sqlalchemy.orm" not in imported
