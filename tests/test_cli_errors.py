"""Broken and hostile input at ``cowrie-db``'s boundary (issue #21): a file that is not
a database, a damaged one, a revision this package does not know, a driver that is not
installed, a closed pipe, out-of-range flags. Each ends in one line naming the problem
and what to do, with the documented exit code, and leaves the database as it was.

The refusals run ``cowrie-db``'s ``main`` in this process (``cowrie_db_here``: the same
output and exit status, without a new process's start); each kind of refusal is also
seen once from a real process (``check``), as are the missing driver, the closed pipe
and the folder that cannot be made."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from cowrieprocessor import __version__, cli
from cowrieprocessor.backfill import BACKFILL_JOB, BackfillKnobs
from cowrieprocessor.cli.knob_flags import knob_x_args
from cowrieprocessor.db.engine import create_engine_from_url
from cowrieprocessor.db.integrity import UnusableDatabase, quick_check, require_usable_sqlite
from cowrieprocessor.settings import SettingsError
from cowrieprocessor.testing.databases import sqlite_path
from cowrieprocessor.testing.runners import (
    COWRIE_DB,
    batches_committed,
    child_env,
    cowrie_db,
    cowrie_db_here,
)
from cowrieprocessor.testing.seed import at_0002, seed_random

# --- fixtures: a sound file, a text file, a damaged one --------------------------------


@pytest.fixture
def sound_sqlite(sqlite_url: str) -> str:
    """A SQLite database at 0002 with enough sessions to span many pages."""
    engine = at_0002(sqlite_url)
    with engine.begin() as conn:
        seed_random(conn, 2000, 100)
    engine.dispose()
    return sqlite_path(sqlite_url)


def damage(path: str) -> None:
    """Garble the root page of session_summaries (an interior page at this size): the
    header, page 1 and every other table stay readable, as with a torn write."""
    with sa.create_engine(f"sqlite:///{path}").connect() as conn:
        page_size = int(conn.exec_driver_sql("PRAGMA page_size").scalar_one())
        root = int(
            conn.exec_driver_sql(
                "SELECT rootpage FROM sqlite_master WHERE name = 'session_summaries'"
            ).scalar_one()
        )
    assert root > 1
    with open(path, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xff" * 64)


@pytest.fixture
def damaged_sqlite(sound_sqlite: str) -> str:
    damage(sound_sqlite)
    return sound_sqlite


@pytest.fixture
def text_file(tmp_path: Path) -> str:
    path = tmp_path / "notes.sqlite"
    path.write_text("hostname,ip\nhoneypot-1,203.0.113.7\n")
    return str(path)


def file_state(path: str) -> tuple[bytes, int]:
    """The file's bytes and mtime: a refused command must change neither."""
    return Path(path).read_bytes(), os.stat(path).st_mtime_ns


# --- the integrity check itself ---------------------------------------------------------


def test_sound_file_passes_quick_check(sound_sqlite: str) -> None:
    engine = create_engine_from_url(f"sqlite:///{sound_sqlite}")
    with engine.connect() as conn:
        require_usable_sqlite(conn)
        assert quick_check(conn) == "ok"
        assert not conn.in_transaction()  # left as found
    engine.dispose()


def test_damaged_file_is_refused_naming_the_problem_and_the_way_out(damaged_sqlite: str) -> None:
    before = file_state(damaged_sqlite)
    engine = create_engine_from_url(f"sqlite:///{damaged_sqlite}")
    with engine.connect() as conn, pytest.raises(UnusableDatabase) as caught:
        require_usable_sqlite(conn)
    engine.dispose()
    message = str(caught.value)
    assert "\n" not in message
    assert f"SQLite database {damaged_sqlite} is damaged (PRAGMA quick_check: " in message
    assert "***" not in message  # the heading line is skipped: the problem is named
    assert f"sqlite3 {damaged_sqlite} .recover" in message and "backup" in message
    assert file_state(damaged_sqlite) == before


def test_text_file_is_refused_at_connect_and_by_the_check(text_file: str) -> None:
    before = file_state(text_file)
    engine = create_engine_from_url(f"sqlite:///{text_file}")
    with pytest.raises(UnusableDatabase, match="is not a SQLite database"):
        engine.connect()
    engine.dispose()
    # A connection made elsewhere (no project pragmas) is refused by the check too.
    plain = sa.create_engine(f"sqlite:///{text_file}")
    with plain.connect() as conn, pytest.raises(UnusableDatabase, match=text_file):
        require_usable_sqlite(conn)
    plain.dispose()
    assert file_state(text_file) == before


def test_new_and_empty_files_are_usable(tmp_path: Path) -> None:
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    for path in (empty, tmp_path / "new.sqlite"):
        engine = create_engine_from_url(f"sqlite:///{path}")
        with engine.connect() as conn:
            require_usable_sqlite(conn)
        engine.dispose()


def test_truncated_file_is_refused_at_connect(sound_sqlite: str) -> None:
    with open(sound_sqlite, "r+b") as f:
        f.truncate(os.path.getsize(sound_sqlite) // 2)
    before = file_state(sound_sqlite)
    engine = create_engine_from_url(f"sqlite:///{sound_sqlite}")
    with (
        pytest.raises(UnusableDatabase, match=r"is damaged \(SQLite: .*\.recover"),
        engine.connect() as conn,
    ):
        require_usable_sqlite(conn)
    engine.dispose()
    assert file_state(sound_sqlite) == before


# --- drivers: refused at engine creation, so cowrie-db and alembic's env.py agree -------

SUPPORTED = "use postgresql://USER@HOST/DB (PostgreSQL 13+, psycopg2) or sqlite:///PATH"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql+psycopg://u:pw@db.invalid/x", "its driver psycopg is not installed"),
        ("postgresql+psycopg://u:pw@db.invalid/x", "pip install 'psycopg[binary]'"),
        ("postgresql+pg8000://u:pw@db.invalid/x", "its driver pg8000 is not installed"),
        ("postgresql+asyncpg://u:pw@db.invalid/x", "asyncpg is an asynchronous driver"),
        ("postgresql+psycopg_async://u:pw@db.invalid/x", "psycopg is an asynchronous driver"),
        ("sqlite+aiosqlite:///cowrie.sqlite", "aiosqlite is an asynchronous driver"),
        ("postgresql+nosuch://u:pw@db.invalid/x", "SQLAlchemy has no postgresql driver 'nosuch'"),
        ("mysql://u:pw@db.invalid/x", "unsupported backend 'mysql'"),
        ("postgres://u:pw@db.invalid/x", "unsupported backend 'postgres' (did you mean postgresql"),
    ],
)
def test_unusable_driver_is_a_settings_error_naming_it(url: str, expected: str) -> None:
    with pytest.raises(SettingsError) as caught:
        create_engine_from_url(url)
    message = str(caught.value)
    assert expected in message and SUPPORTED in message
    assert "pw" not in message.replace("psycopg", "")
    assert "\n" not in message


def test_cowrie_db_names_a_missing_driver_in_one_line() -> None:
    out = cowrie_db("--db", "postgresql+psycopg://u:pw@db.invalid/x", "check")
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        "cowrie-db check: error: database URL postgresql+psycopg://u:***@db.invalid/x: its "
        "driver psycopg is not installed (`pip install 'psycopg[binary]'` into this "
        f"environment); or {SUPPORTED}"
    ]


# --- every command on a database it cannot use: one line, exit 2, the file unchanged ----

READS = [
    ["check"],
    ["status"],
    ["status", "--json"],
    ["verify"],
    ["current"],
]
WRITES = [
    ["backfill"],
    ["backfill", "--dry-run"],
    ["clear", "--all", "--yes"],
    ["upgrade"],
    ["downgrade", "0002_snapshot_columns"],
    ["demo-data", "--sessions", "10", "--ips", "5", "--force"],
]
STEERS = [["control", "pause"], ["control", "set", "batch_size=10"]]
# run as a real process for each kind of refusal; the other commands in this one
AS_A_PROCESS = ["check"]


def cowrie_db_for(command: list[str]) -> Callable[..., subprocess.CompletedProcess[str]]:
    return cowrie_db if command == AS_A_PROCESS else cowrie_db_here


def refused(path: str, command: list[str], expected: str) -> str:
    """Run ``cowrie-db --db sqlite:///PATH COMMAND``: it must fail with exit 2 and one
    error line holding ``expected``, no traceback, and leave the file as it was."""
    before = file_state(path)
    out = cowrie_db_for(command)("--db", f"sqlite:///{path}", *command)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if f"cowrie-db {command[0]}:" in line]
    assert len(errors) == 1 and expected in errors[0], out.stderr
    assert file_state(path) == before
    return errors[0]


@pytest.fixture(scope="module")
def seeded_template(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One seeded SQLite file at 0002, copied by each test that damages or stamps it."""
    path = tmp_path_factory.mktemp("template") / "seeded.sqlite"
    engine = at_0002(f"sqlite:///{path}")
    with engine.begin() as conn:
        seed_random(conn, 2000, 100)
    engine.dispose()
    return str(path)


def copy_of(template: str, tmp_path: Path) -> str:
    path = tmp_path / "cowrie.sqlite"
    shutil.copyfile(template, path)
    return str(path)


def stamp_future(url: str) -> None:
    engine = create_engine_from_url(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = :v"), {"v": "9999_future"})
    engine.dispose()


UNKNOWN_REVISION = (
    f"database is at revision 9999_future, which this cowrieprocessor (version {__version__}, "
    "revisions up to 0004_snapshot_indexes) does not know; it was migrated by a newer release "
    "- use that release's cowrie-db"
)


@pytest.mark.parametrize("command", READS + WRITES + STEERS, ids=" ".join)
def test_unknown_revision_is_refused_by_every_command(
    seeded_template: str, tmp_path: Path, command: list[str]
) -> None:
    path = copy_of(seeded_template, tmp_path)
    stamp_future(f"sqlite:///{path}")
    refused(path, command, UNKNOWN_REVISION)


def test_unknown_revision_is_refused_on_postgresql(pg_url: str) -> None:
    engine = at_0002(pg_url)
    with engine.begin() as conn:
        seed_random(conn, 50, 10)
    engine.dispose()
    stamp_future(pg_url)

    def tables() -> list[str]:
        engine = create_engine_from_url(pg_url)
        try:
            return sorted(sa.inspect(engine).get_table_names())
        finally:
            engine.dispose()

    before = tables()
    for command in (["check"], ["backfill"], ["upgrade"]):
        out = cowrie_db_for(command)("--db", pg_url, *command)
        assert out.returncode == 2 and UNKNOWN_REVISION in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
    assert tables() == before  # the backfill's progress table was not created


@pytest.mark.parametrize("command", READS + WRITES + STEERS + [["history"]], ids=" ".join)
def test_text_file_is_refused_by_every_command(text_file: str, command: list[str]) -> None:
    refused(text_file, command, f"{text_file} is not a SQLite database")


@pytest.mark.parametrize("command", [["check"], *WRITES], ids=" ".join)
def test_damaged_file_is_refused_before_the_first_write(
    seeded_template: str, tmp_path: Path, command: list[str]
) -> None:
    path = copy_of(seeded_template, tmp_path)
    damage(path)
    line = refused(path, command, f"SQLite database {path} is damaged (PRAGMA quick_check: ")
    assert f"`sqlite3 {path} .recover`" in line


def test_check_reports_the_integrity_check(seeded_template: str, tmp_path: Path) -> None:
    path = copy_of(seeded_template, tmp_path)
    sound = cowrie_db_here("--db", f"sqlite:///{path}", "check")
    assert sound.returncode == 0, sound.stderr
    assert "Integrity:  ok (PRAGMA quick_check)\n" in sound.stdout
    damage(path)
    damaged = cowrie_db_here("--db", f"sqlite:///{path}", "check")
    assert damaged.returncode == 2
    assert "Integrity:  FAILED (PRAGMA quick_check; see the error)" in damaged.stdout


@pytest.mark.parametrize("command", [["check"], ["status"], *WRITES], ids=" ".join)
def test_truncated_file_is_refused(
    seeded_template: str, tmp_path: Path, command: list[str]
) -> None:
    path = copy_of(seeded_template, tmp_path)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    refused(path, command, f"SQLite database {path} is damaged (SQLite: ")


# --- the output's reader goes away: quiet, no traceback ---------------------------------


def test_closed_pipe_ends_quietly(seeded_template: str, tmp_path: Path) -> None:
    """`cowrie-db check | head -1` with the reader gone before the first write: the
    worst case of that pipeline, deterministic."""
    path = copy_of(seeded_template, tmp_path)
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        out = subprocess.run(
            [str(COWRIE_DB), "--db", f"sqlite:///{path}", "check"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
            check=False,
        )
    finally:
        os.close(write_end)
    assert out.returncode == 1
    assert out.stderr == ""


# --- flags: out of range is bad usage; -x on the job commands ---------------------------


@pytest.mark.parametrize("value", ["150", "-1", "100.5", "nan", "inf", "ten"])
def test_min_coverage_outside_0_to_100_is_bad_usage(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--db", "sqlite:///unused.sqlite", "verify", "--min-coverage", value])
    assert exited.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("cowrie-db verify: error: argument --min-coverage: ")
    assert value in err[-1]


@pytest.mark.parametrize("value", ["0", "95", "100"])
def test_min_coverage_within_0_to_100_is_taken(value: str) -> None:
    args = cli.build_parser().parse_args(["verify", "--min-coverage", value])
    assert args.min_coverage == float(value)


def test_backfill_takes_x_knobs_as_upgrade_does(seeded_template: str, tmp_path: Path) -> None:
    path = copy_of(seeded_template, tmp_path)
    out = cowrie_db("--db", f"sqlite:///{path}", "backfill", "-x", "batch_size=100")
    assert out.returncode == 0, out.stderr
    engine = create_engine_from_url(f"sqlite:///{path}")
    # 2000 sessions in fixed ranges of 100 keys: at least 20 batches (1 with the default)
    assert batches_committed(engine, BACKFILL_JOB) >= 20
    engine.dispose()


@pytest.mark.parametrize(
    ("x", "expected"),
    [
        (["-x", "batchsize=100"], "unknown backfill knob(s) batchsize; known: "),
        (["-x", "batch_size=ten"], "batch_size='ten' (from -x batch_size)"),
        (["-x", "batch_size"], "-x 'batch_size': expected KEY=VALUE"),
        (["-x", "batch_size=10", "--batch-size", "20"], "--batch-size 20 and -x batch_size=10"),
    ],
)
def test_bad_x_is_refused_before_connecting(
    seeded_template: str, tmp_path: Path, x: list[str], expected: str
) -> None:
    path = copy_of(seeded_template, tmp_path)
    for command in (["backfill"], ["clear", "--all", "--yes"], ["upgrade"]):
        refused(path, [*command, *x], expected)


def test_knobs_are_validated_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = BackfillKnobs.from_sources

    def counted(*args: object, **kwargs: object) -> object:
        calls.append(args)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(BackfillKnobs, "from_sources", counted)
    args = cli.build_parser().parse_args(
        ["upgrade", "-x", "batch_time=100ms", "--batch-size", "500", "--status-dir", "."]
    )
    x = knob_x_args(args)
    assert sorted(x) == sorted(
        [
            "batch_time=100ms",
            "batch_size=500",
            f"status_file={Path('.') / 'snapshot_backfill.json'}",
        ]
    )
    assert len(calls) == 1


def test_a_database_path_under_a_file_is_one_line(tmp_path: Path) -> None:
    """``upgrade`` creates the database: its folder cannot be made under a file."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    out = cowrie_db("--db", f"sqlite:///{blocker}/cowrie.sqlite", "upgrade")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "cannot create its folder" in errors[0], out.stderr
    assert blocker.read_text() == "not a folder\n"
