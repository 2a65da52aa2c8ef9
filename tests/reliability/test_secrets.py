"""No password anywhere: not in the ``alembic`` command's output, its errors, the status
file or the progress table, whatever the run does (fails half way, is refused a hostile
knob value or a connection, or completes); not in anything ``cowrie-db`` prints, with
``-v`` or ``--json``; wherever the URL carries it (the userinfo, ``?password=``,
``?sslpassword=``, a percent-encoded key) and with ``PGPASSWORD`` set (issue #21).
And ``--db ""`` (a variable a script forgot to set) is refused, not read as "not given".
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import pytest
import sqlalchemy as sa

from cowrieprocessor.backfill.progress import PROGRESS_TABLE
from cowrieprocessor.db.engine import create_engine_from_url
from cowrieprocessor.testing.reliability.datasets import Dataset
from cowrieprocessor.testing.runners import COWRIE_DB, alembic_argv, run_alembic, run_to_end

PASSWORD = "p@ss:w/rd?#%&= x'\"1"  # every character a URL parser cares about


def _assert_no_password(secret_url: str, *texts: str) -> None:
    escaped = secret_url.split("postgres:", 1)[1].rsplit("@", 1)[0]
    for text in texts:
        for fragment in (PASSWORD, escaped, "p@ss", "w/rd", "rd?#"):
            assert fragment not in text, f"{fragment!r} leaked in: ...{text[-300:]}"


@pytest.mark.postgres
def test_no_password_in_alembic_output_errors_status_file_or_progress_table(
    pg_small: Dataset, tmp_path: Path
) -> None:
    url = pg_small.clone()
    secret_url = sa.make_url(url).set(password=PASSWORD).render_as_string(hide_password=False)
    engine = create_engine_from_url(url)
    status = tmp_path / "status.json"
    env = {"COWRIE_BACKFILL_STATUS_FILE": str(status)}
    texts: list[str] = []
    # a failure half way: row locks on the later sessions outlast every retry
    locker = engine.connect()
    locker.execute(
        sa.text(
            "SELECT 1 FROM session_summaries WHERE session_id > (SELECT session_id "
            "FROM session_summaries ORDER BY session_id OFFSET 250 LIMIT 1) FOR UPDATE"
        )
    )
    failed = run_alembic(
        secret_url,
        "upgrade",
        "head",
        x={"batch_size": "100", "lock_timeout": "50", "max_retries": "0"},
        env=env,
    )
    locker.rollback()
    locker.close()
    assert failed.returncode != 0 and "lock timeout" in failed.stderr, failed.stderr
    texts += [failed.stderr, failed.stdout, status.read_text()]
    # a hostile knob value: refused by name before it is used; and a refused connection
    hostile = run_alembic(
        secret_url, "upgrade", "head", x={"statement_timeout": "0; DROP TABLE ip_inventory"}
    )
    assert hostile.returncode != 0
    assert "statement_timeout='0; DROP TABLE ip_inventory'" in hostile.stderr
    assert sa.inspect(engine).has_table("ip_inventory")
    refused = sa.make_url(secret_url).set(port=1).render_as_string(hide_password=False)
    unreachable = run_alembic(refused, "upgrade", "head")
    assert unreachable.returncode != 0
    texts += [hostile.stderr, hostile.stdout, unreachable.stderr, unreachable.stdout]
    # the run that completes (resuming), and the progress table it leaves
    ok = run_alembic(secret_url, "upgrade", "head", env=env)
    assert ok.returncode == 0, ok.stderr
    assert "Database: postgresql+psycopg2://postgres:***@" in ok.stderr
    texts += [ok.stderr, ok.stdout, status.read_text()]
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT * FROM {PROGRESS_TABLE}")).all()
    table = json.dumps([list(row) for row in rows], default=str)
    texts.append(table)
    _assert_no_password(secret_url, *texts)
    assert "://" not in status.read_text() + table
    engine.dispose()


# --- the query string, PGPASSWORD, both entry points (issue #21) --------------------------

QUERY_SECRET = "q-S3cr3t"  # ?password=
SSL_SECRET = "k-S3cr3t"  # ?sslpassword= (the client key's passphrase)
ENV_SECRET = "e-S3cr3t"  # PGPASSWORD
SECRETS = (PASSWORD, QUERY_SECRET, SSL_SECRET, ENV_SECRET, "S3cr3t")


def _with_query_secrets(url: str, *, driver: str) -> str:
    """``url`` with a password in the userinfo and two in the query, one of them under a
    percent-encoded key (libpq and SQLAlchemy both decode keys)."""
    parsed = sa.make_url(url).set(drivername=driver, password=PASSWORD)
    plain = parsed.render_as_string(hide_password=False)
    return f"{plain}?sslmode=disable&password={QUERY_SECRET}&ssl%70assword={SSL_SECRET}"


def _run(argv: list[str], tmp_path: Path, env: Mapping[str, str] | None = None) -> str:
    """Run a command with ``PGPASSWORD`` set; its stdout and stderr, with the exit code."""
    done = run_to_end(
        argv, {"PGPASSWORD": ENV_SECRET, "COWRIE_DATA_DIR": str(tmp_path), **(env or {})}
    )
    # not the argv: it holds the secrets
    return f"$ {Path(argv[0]).name} -> {done.returncode}\n{done.stdout}{done.stderr}"


def _assert_nothing_secret(outputs: list[str]) -> None:
    for output in outputs:
        for secret in SECRETS:
            assert secret not in output, f"{secret!r} leaked in:\n{output}"
        # shown masked: as typed (cowrie-db), or as SQLAlchemy renders it (env.py)
        assert re.search(r"[?&]password=\*\*\*", output), output
        assert re.search(r"[?&]ssl(p|%70)assword=\*\*\*", output), output


@pytest.mark.postgres
def test_no_secret_of_the_query_string_in_any_output_of_either_command(
    pg_small: Dataset, tmp_path: Path
) -> None:
    url = pg_small.clone()
    alembic_url = _with_query_secrets(url, driver="postgresql+psycopg2")
    db_url = _with_query_secrets(url, driver="postgresql")
    outputs = [_run(alembic_argv(alembic_url, "upgrade", "head"), tmp_path)]
    assert outputs[0].startswith("$ ") and "-> 0\n" in outputs[0], outputs[0]
    assert "Database: postgresql+psycopg2://postgres:***@" in outputs[0]
    for command in (
        ["check"],
        ["-v", "check"],
        ["status", "--json"],
        ["-v", "status"],
        ["verify", "--json"],
        ["-v", "upgrade"],
        ["-v", "backfill", "--dry-run"],
    ):
        output = _run([str(COWRIE_DB), "--db", db_url, *command], tmp_path)
        assert " -> 0\n" in output, output
        outputs.append(output)
    status = json.loads(outputs[3].split("\n", 1)[1])
    assert status["database"].endswith("?sslmode=disable&password=***&ssl%70assword=***")
    _assert_nothing_secret(outputs)


def test_no_secret_when_the_server_cannot_be_reached(tmp_path: Path) -> None:
    """Port 1 on the loopback: refused at once, by both commands, in one line each."""
    url = "postgresql://postgres@127.0.0.1:1/cowrie"
    outputs = [
        _run(alembic_argv(_with_query_secrets(url, driver="postgresql+psycopg2"), *cmd), tmp_path)
        for cmd in (["upgrade", "head"], ["current"])
    ]
    for command in (["check"], ["-v", "check"], ["status", "--json"], ["upgrade"], ["verify"]):
        db_url = _with_query_secrets(url, driver="postgresql")
        output = _run([str(COWRIE_DB), "--db", db_url, *command], tmp_path)
        assert "cannot connect to postgresql://postgres:***@127.0.0.1:1/cowrie?" in output
        outputs.append(output)
    for output in outputs:
        assert " -> 0\n" not in output and "Connection refused" in output, output
    _assert_nothing_secret(outputs)


@pytest.mark.postgres
def test_no_secret_in_alembic_verbose_current(pg_url: str, tmp_path: Path) -> None:
    outputs = [
        _run(
            alembic_argv(_with_query_secrets(pg_url, driver="postgresql+psycopg2"), *cmd), tmp_path
        )
        for cmd in (["upgrade", "head"], ["current", "-v"])
    ]
    outputs.append(
        _run(
            [
                str(COWRIE_DB),
                "--db",
                _with_query_secrets(pg_url, driver="postgresql"),
                "current",
                "-v",
            ],
            tmp_path,
        )
    )
    _assert_nothing_secret(outputs)


# --- --db "": a variable a script forgot to set ---------------------------------------------


@pytest.mark.parametrize("empty", ["", "   "], ids=["empty", "blank"])
@pytest.mark.parametrize("command", [["check"], ["upgrade"], ["status", "--json"]])
def test_an_empty_db_is_refused_and_nothing_is_touched(
    empty: str, command: list[str], tmp_path: Path
) -> None:
    for argv in (
        [str(COWRIE_DB), "--db", empty, *command],
        [str(COWRIE_DB), *command, "--db", empty],
    ):
        done = run_to_end(
            argv, {"COWRIE_DATA_DIR": str(tmp_path), "COWRIE_DB_URL": "sqlite:////x.db"}, 120
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr == (
            f"cowrie-db {command[0]}: error: --db is empty (an unset variable in a script?): "
            "give a database URL, or leave --db out to use $COWRIE_DB_URL if set, else the "
            f"embedded SQLite {tmp_path / 'cowrie.sqlite'}\n"
        )
        assert done.stdout == ""
    assert list(tmp_path.iterdir()) == []  # the embedded default was not created


def test_alembic_x_db_empty_is_refused_and_nothing_is_touched(tmp_path: Path) -> None:
    for command in (["upgrade", "head"], ["current"]):
        output = _run(alembic_argv("", *command), tmp_path)
        assert " -> 0\n" not in output and "-x db" in output and "is empty" in output, output
    assert list(tmp_path.iterdir()) == []


def test_cowrie_db_x_db_empty_is_refused(tmp_path: Path) -> None:
    output = _run([str(COWRIE_DB), "upgrade", "-x", "db="], tmp_path)
    assert " -> 2\n" in output and "-x db is empty (an unset variable in a script?)" in output
    assert list(tmp_path.iterdir()) == []


def test_an_empty_environment_variable_still_means_unset(tmp_path: Path) -> None:
    """``COWRIE_DB_URL= make demo``: the Makefile's way of saying "the default"."""
    output = _run([str(COWRIE_DB), "check"], tmp_path, env={"COWRIE_DB_URL": ""})
    assert " -> 0\n" in output and f"Database:   sqlite:///{tmp_path}/cowrie.sqlite" in output
