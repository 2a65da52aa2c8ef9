"""Broken and hostile input at ``cowrie-db``'s boundary (issue #21): a file that is not
a database, a damaged one, a revision this package does not know, a driver that is not
installed, a closed pipe, out-of-range flags. Each ends in one line naming the problem
and what to do, with the documented exit code, and leaves the database as it was."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import sqlalchemy as sa

from cowrieprocessor.db.engine import create_engine_from_url
from cowrieprocessor.db.integrity import UnusableDatabase, quick_check, require_usable_sqlite
from cowrieprocessor.settings import SettingsError
from tests.databases import sqlite_path
from tests.helpers import cowrie_db
from tests.seed import at_0002, seed_random

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
