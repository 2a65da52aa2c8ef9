"""``alembic upgrade head``, the deploy command, on broken input (issue #21): a bad knob, an
unusable URL, a server that refuses us, an unknown revision, Ctrl-C and SIGTERM. Each ends
in one line naming the problem and what to do, with its exit status (2 bad usage or an
unusable database, 130 Ctrl-C, 143 SIGTERM), no traceback, and the database as it was;
an interrupted run is resumed by the same command. All through the real ``alembic``."""

from __future__ import annotations

import hashlib
import re
import signal
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import sqlalchemy as sa

from cowrieprocessor.backfill import BACKFILL_JOB
from cowrieprocessor.db.engine import create_engine_from_url
from cowrieprocessor.deploy_errors import Run, Terminated, describe, one_line_failures
from cowrieprocessor.testing.databases import Databases, sqlite_path
from cowrieprocessor.testing.runners import (
    ALEMBIC,
    Alembic,
    batches_committed,
    run_alembic,
    run_to_end,
)
from cowrieprocessor.testing.seed import at_0002, seed_random, snapshots, version

HEAD = "0004_snapshot_indexes"
AT_0002 = "0002_snapshot_columns"
SECRET = "s3cret-pw"
# What a refusal may print: Alembic's INFO lines before it (the database, the context),
# and the one line. A traceback is dozens.
MAX_LINES = 6


def alembic(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """The real ``alembic -c alembic.ini ARGS`` (no ``-x db`` unless in ARGS)."""
    return run_to_end([*ALEMBIC, *args], env, timeout)


def one_line(out: subprocess.CompletedProcess[str], status: int, *words: str) -> str:
    """Assert ``out`` is a short refusal ending in one line with ``words``; return it."""
    text = out.stdout + out.stderr
    lines = [line for line in text.splitlines() if line.strip()]
    assert out.returncode == status, text
    assert "Traceback" not in text, text
    assert len(lines) <= MAX_LINES, text
    last = lines[-1]
    for word in words:
        assert word in last, text
    assert SECRET not in text
    return last


def state(url: str) -> tuple[str, dict[str, tuple[object, ...]], list[str]]:
    """The revision, every session's snapshot columns, and the tables."""
    engine = create_engine_from_url(url)
    try:
        with engine.connect() as conn:
            tables = sorted(sa.inspect(conn).get_table_names())
        return version(engine), snapshots(engine), tables
    finally:
        engine.dispose()


def file_bytes(url: str) -> str:
    return hashlib.sha256(Path(sqlite_path(url)).read_bytes()).hexdigest()


@pytest.fixture
def seeded_sqlite(sqlite_url: str) -> str:
    """A SQLite database at 0002 with sessions to backfill."""
    engine = at_0002(sqlite_url)
    with engine.begin() as conn:
        seed_random(conn, 600, 60)
    engine.dispose()
    return sqlite_url


# --- bad usage on a real database: refused before anything is written ------------------


@pytest.mark.parametrize(
    ("args", "env", "words"),
    [
        (["-x", "batch_size=ten", "upgrade", "head"], {}, ["FAILED:", "batch_size='ten'"]),
        (["-x", "batch_size=0", "upgrade", "head"], {}, ["FAILED:", "batch_size", "1..1000000"]),
        (["-x", "nonsense=1", "upgrade", "head"], {}, ["unknown backfill knob(s) nonsense"]),
        (
            ["upgrade", "head"],
            {"COWRIE_BACKFILL_BATCH_SIZE": "ten"},
            ["FAILED:", "COWRIE_BACKFILL_BATCH_SIZE"],
        ),
        (["-x", "join_back=sideways", "upgrade", "head"], {}, ["FAILED:", "join_back"]),
        (
            ["upgrade", "nosuchrev"],
            {},
            ["FAILED:", "'nosuchrev'", "alembic history", "nothing was changed"],
        ),
        (["downgrade", "nosuchrev"], {}, ["FAILED:", "'nosuchrev'", "alembic history"]),
    ],
    ids=["knob-not-a-number", "knob-out-of-range", "unknown-knob", "knob-in-env",
         "knob-choice", "unknown-target", "unknown-downgrade-target"],
)  # fmt: skip
def test_bad_usage_is_one_line_and_changes_nothing(
    seeded_sqlite: str, args: list[str], env: dict[str, str], words: list[str]
) -> None:
    before, raw = state(seeded_sqlite), file_bytes(seeded_sqlite)
    out = alembic("-x", f"db={seeded_sqlite}", *args, env=env)
    one_line(out, 2, *words)
    assert state(seeded_sqlite) == before
    assert file_bytes(seeded_sqlite) == raw


def test_database_at_an_unknown_revision_is_named(seeded_sqlite: str) -> None:
    """Alembic says only "Can't locate revision"; the line says the database is there."""
    engine = create_engine_from_url(seeded_sqlite)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = 'zzzz_from_later'"))
    engine.dispose()
    before = state(seeded_sqlite)
    out = run_alembic(seeded_sqlite, "upgrade", "head")
    one_line(out, 2, "database is at revision zzzz_from_later", f"up to {HEAD}) does not know")
    assert state(seeded_sqlite) == before


def test_sqlite_locked_by_another_writer_is_one_line(seeded_sqlite: str) -> None:
    """Another program holds the write lock past lock_timeout: say so, and how to go on."""
    before = state(seeded_sqlite)
    holder = sqlite3.connect(sqlite_path(seeded_sqlite), isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        out = run_alembic(seeded_sqlite, "upgrade", "head", x={"lock_timeout": "200"})
    finally:
        holder.rollback()
        holder.close()
    one_line(out, 1, "FAILED: SQLite database sqlite:///", "is locked by another writer",
             "waited 200 ms", "-x lock_timeout=MS")  # fmt: skip
    assert state(seeded_sqlite) == before


def test_raiseerr_keeps_the_traceback(seeded_sqlite: str) -> None:
    """Alembic's own --raiseerr: the full traceback, for debugging."""
    out = alembic(
        "--raiseerr", "-x", f"db={seeded_sqlite}", "-x", "batch_size=ten", "upgrade", "head"
    )
    assert out.returncode == 1
    assert "Traceback" in out.stderr
    assert "KnobError: batch_size='ten'" in out.stderr


def test_a_bug_is_not_turned_into_one_line() -> None:
    """An exception that is not an operator's problem keeps its traceback."""
    assert describe(ZeroDivisionError("division by zero"), Run()) is None
    assert describe(AttributeError("x"), Run()) is None


@pytest.mark.parametrize("stop", [Terminated, KeyboardInterrupt])
def test_an_interrupt_inside_a_librarys_cleanup_is_still_the_interrupt(
    stop: type[KeyboardInterrupt], capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGTERM that lands inside SQLAlchemy's commit can make its cleanup fail with an
    AssertionError of its own (seen in CI): the operator still reads the interruption's
    line and exit status, not that error's traceback. A plain bug keeps its traceback."""

    def cleanup_fails_under_the_interrupt() -> None:
        try:
            raise stop
        except KeyboardInterrupt:
            raise AssertionError  # noqa: B904 - as SQLAlchemy's safe_reraise did

    with pytest.raises(SystemExit) as exited:
        one_line_failures(cleanup_fails_under_the_interrupt, Run())
    what = "Terminated (SIGTERM)" if stop is Terminated else "Interrupted (Ctrl-C)"
    assert exited.value.code == (143 if stop is Terminated else 130)
    assert capsys.readouterr().err.startswith(f"{what}: the running revision was rolled back")

    def bug() -> None:
        raise AssertionError

    with pytest.raises(AssertionError):
        one_line_failures(bug, Run())


# --- the URL: unusable, and nothing created anywhere ------------------------------------


@pytest.mark.parametrize(
    ("db", "words"),
    [
        ("not-a-url", ["FAILED:", "'not-a-url' is not a valid URL"]),
        ("", ["FAILED:", "-x db= is empty", "COWRIE_DB_URL"]),
        (
            f"postgresql://cowrie:{SECRET}@127.0.0.1:1/nowhere",
            ["FAILED: cannot connect to postgresql://cowrie:***@127.0.0.1:1/nowhere",
             "Connection refused", "check the host and port"],
        ),
        (
            f"postgresql://cowrie:{SECRET}@no-such-host.invalid/nowhere",
            ["FAILED: cannot connect to postgresql://cowrie:***@no-such-host.invalid/nowhere",
             "no-such-host.invalid", "check the host name"],
        ),
        (
            f"postgresql+asyncpg://cowrie:{SECRET}@127.0.0.1/nowhere",
            ["FAILED:", "asynchronous driver"],
        ),
        ("mysql://cowrie@127.0.0.1/nowhere", ["FAILED:", "unsupported backend 'mysql'"]),
    ],
    ids=["not-a-url", "empty", "connection-refused", "unknown-host", "async-driver", "mysql"],
)  # fmt: skip
def test_unusable_url_is_one_line(tmp_path: Path, db: str, words: list[str]) -> None:
    data_dir = tmp_path / "data"  # where the embedded default would be created
    out = alembic("-x", f"db={db}", "upgrade", "head", env={"COWRIE_DATA_DIR": str(data_dir)})
    one_line(out, 2, *words)
    assert not data_dir.exists()


def test_x_db_without_a_value_is_refused_not_the_default(tmp_path: Path) -> None:
    """``-x db`` (no ``=``) must not fall through to the embedded default either."""
    data_dir = tmp_path / "data"
    out = alembic("-x", "db", "upgrade", "head", env={"COWRIE_DATA_DIR": str(data_dir)})
    one_line(out, 2, "-x db= is empty")
    assert not data_dir.exists()


def test_sqlite_file_that_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    """A path under a regular file: its folder cannot be created."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    out = alembic("-x", f"db=sqlite:///{blocker}/cowrie.sqlite", "upgrade", "head")
    one_line(out, 2, "FAILED: database URL sqlite:///", "cannot create its folder", "file's path")
    assert blocker.read_text() == "not a folder\n"


def test_text_file_is_refused_before_any_revision(tmp_path: Path) -> None:
    text = tmp_path / "notes.sqlite"
    text.write_text("these are notes, not a database\n" * 200)
    raw = text.read_bytes()
    out = alembic("-x", f"db=sqlite:///{text}", "upgrade", "head")
    one_line(out, 2, "FAILED:", "is not a SQLite database")
    assert text.read_bytes() == raw


# --- PostgreSQL: a server that refuses us -----------------------------------------------


def test_database_missing_on_a_live_server_is_one_line(pg_server_url: str) -> None:
    url = sa.make_url(pg_server_url).set(database=f"cowrie_missing_{uuid.uuid4().hex[:8]}")
    out = alembic("-x", f"db={url.render_as_string(hide_password=False)}", "upgrade", "head")
    one_line(out, 2, "FAILED: cannot connect to", "does not exist", "create the database")


@pytest.fixture
def password_role(pg_server_url: str) -> Iterator[tuple[str, str]]:
    """A role that must give its password over TCP (scram-sha-256 in pg_hba.conf, first
    line, for that role only): (role, right password). Skipped on a server whose
    pg_hba.conf this process cannot edit (TEST_POSTGRES_URL elsewhere)."""
    role, password = f"cowrie_pw_{uuid.uuid4().hex[:8]}", "right-one"
    admin = create_engine_from_url(pg_server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        hba = Path(str(conn.exec_driver_sql("SHOW hba_file").scalar_one()))
        try:
            original = hba.read_text()
            hba.write_text(original)
        except OSError as exc:
            admin.dispose()
            pytest.skip(f"cannot edit {hba}: {exc}")
        _run_formatted(conn, "CREATE ROLE %I LOGIN PASSWORD %L", role, password)
        hba.write_text(f"host all {role} 127.0.0.1/32 scram-sha-256\n{original}")
        conn.exec_driver_sql("SELECT pg_reload_conf()")
    wrong = sa.make_url(pg_server_url).set(username=role, password="wrong")
    try:
        _wait_until_refused(wrong)
        yield role, password
    finally:
        hba.write_text(original)
        with admin.connect() as conn:
            conn.exec_driver_sql("SELECT pg_reload_conf()")
            _run_formatted(conn, "DROP ROLE IF EXISTS %I", role)
        admin.dispose()


def _run_formatted(conn: sa.Connection, template: str, *values: str) -> None:
    """Run a statement PostgreSQL builds itself with ``format()`` (``%I`` quotes a name,
    ``%L`` a literal): role DDL takes no bound parameters."""
    params = {f"v{i}": v for i, v in enumerate(values)}
    args = "".join(f", :v{i}" for i in range(len(values)))
    statement = conn.execute(sa.text(f"SELECT format(:t{args})"), {"t": template, **params})
    conn.exec_driver_sql(str(statement.scalar_one()))


def _wait_until_refused(url: sa.URL, timeout: float = 30.0) -> None:
    """pg_reload_conf() only signals the postmaster: wait until the wrong password is
    refused (the new pg_hba.conf is in force)."""
    deadline = time.monotonic() + timeout
    engine = create_engine_from_url(url)
    try:
        while True:
            try:
                engine.connect().close()
            except sa.exc.OperationalError:
                return
            assert time.monotonic() < deadline, "pg_hba.conf was not reloaded"
            time.sleep(0.05)
    finally:
        engine.dispose()


def test_wrong_password_is_one_line_and_changes_nothing(
    pg_url: str, password_role: tuple[str, str]
) -> None:
    role, _right = password_role
    at_0002(pg_url).dispose()
    before = state(pg_url)
    url = sa.make_url(pg_url).set(username=role, password=SECRET)
    out = alembic("-x", f"db={url.render_as_string(hide_password=False)}", "upgrade", "head")
    last = one_line(out, 2, "FAILED: cannot connect to", "password authentication failed",
                    "check the user and password")  # fmt: skip
    assert f"{role}:***@" in last
    assert state(pg_url) == before


def test_closed_port_on_the_server_host_is_one_line(pg_server_url: str) -> None:
    """The live server's host, a port where nothing listens: refused, said in one line."""
    url = sa.make_url(pg_server_url).set(port=1, password=SECRET)
    out = alembic("-x", f"db={url.render_as_string(hide_password=False)}", "upgrade", "head")
    one_line(out, 2, "FAILED: cannot connect to", ":***@", "Connection refused")


# --- Ctrl-C and SIGTERM: the open batch rolled back, not stamped, resumable -------------

STOPPED = {
    signal.SIGINT: (130, "Interrupted (Ctrl-C)"),
    signal.SIGTERM: (143, "Terminated (SIGTERM)"),
}
SLOW = {"batch_size": "60", "pause_ms": "150"}  # ten batches and more, over a second


def _interrupt_the_backfill(url: str, sig: signal.Signals) -> None:
    engine = create_engine_from_url(url)
    try:
        child = Alembic(url, "upgrade", "head", x=SLOW)
        assert child.wait_for_batches(engine, BACKFILL_JOB, 2), child.output
        child.proc.send_signal(sig)
        status, words = STOPPED[sig]
        assert child.wait() == status, child.output
        committed = batches_committed(engine, BACKFILL_JOB)
        assert version(engine) == AT_0002  # 0003 not stamped
    finally:
        engine.dispose()
    text = child.output
    assert "Traceback" not in text, text
    last = text.splitlines()[-1]
    assert last.startswith(words), text
    assert f"the database is at {AT_0002}" in last
    assert "rolled back, not stamped" in last
    said = re.search(r"keeps its ([\d,]+) committed batches", last)
    assert said is not None and int(said[1].replace(",", "")) == committed, text
    assert last.endswith("run `alembic upgrade head` again to resume"), text


def _resumed_as_if_never_stopped(url: str, uninterrupted: str) -> None:
    """The same command resumes and finishes; every session ends as in a run that was
    never stopped (a copy of the database taken before, migrated in one go)."""
    for target in (url, uninterrupted):
        out = run_alembic(target, "upgrade", "head")
        assert out.returncode == 0, out.stderr
    engine, reference = create_engine_from_url(url), create_engine_from_url(uninterrupted)
    try:
        assert version(engine) == HEAD
        assert snapshots(engine) == snapshots(reference)
    finally:
        engine.dispose()
        reference.dispose()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupted_backfill_says_how_to_resume(
    db_url: str, databases: Databases, sig: signal.Signals
) -> None:
    engine = at_0002(db_url)
    with engine.begin() as conn:
        seed_random(conn, 600, 60)
    engine.dispose()
    uninterrupted = databases.clone(db_url)
    _interrupt_the_backfill(db_url, sig)
    _resumed_as_if_never_stopped(db_url, uninterrupted)
