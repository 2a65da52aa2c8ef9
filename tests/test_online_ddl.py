"""PostgreSQL DDL of the revisions never queues the loader behind it for long."""

from __future__ import annotations

import re
import threading
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command

from cowrieprocessor.db.adoption import CK_NAME, FK_NAME
from cowrieprocessor.db.engine import create_engine_from_url
from cowrieprocessor.testing.runners import alembic_config, run_alembic, wait_until
from cowrieprocessor.testing.seed import migrate


@pytest.mark.postgres
def test_ddl_gives_up_the_lock_queue_after_lock_timeout_and_retries(pg_url: str) -> None:
    migrate(pg_url, "0001_baseline")
    engine = create_engine_from_url(pg_url)
    holder = engine.connect()
    holder.execute(sa.text("SELECT count(*) FROM session_summaries"))  # ACCESS SHARE, held

    queued: list[object] = []  # query_start of each attempt seen waiting for our lock

    def queued_alter(conn: sa.Connection) -> object:
        started = conn.execute(
            sa.text(
                "SELECT max(query_start) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE 'ALTER TABLE session_summaries%'"
            )
        ).scalar()
        conn.rollback()
        return started

    def release_after_one_timeout() -> None:
        # Hold the lock until the ALTER has given up once and queued again (the retry).
        with engine.connect() as conn:

            def queued_again() -> bool:
                started = queued_alter(conn)
                if started is not None and started not in queued:
                    queued.append(started)
                return len(queued) >= 2

            try:
                wait_until("the ALTER to queue, give up and queue again", queued_again)
            finally:
                holder.rollback()

    releaser = threading.Thread(target=release_after_one_timeout)
    releaser.start()
    out = run_alembic(pg_url, "upgrade", "0002_snapshot_columns")
    releaser.join()
    holder.close()
    assert out.returncode == 0, out.stderr
    assert "lock_timeout (3000 ms) on DDL, attempt 1/5" in out.stderr
    assert len(queued) == 2, f"the ALTER was seen queued {len(queued)} time(s), not twice"
    with engine.connect() as conn:
        columns = {c["name"] for c in sa.inspect(conn).get_columns("session_summaries")}
    assert "snapshot_country" in columns
    engine.dispose()


@pytest.mark.postgres
def test_constraints_are_added_not_valid_then_validated_by_0004(pg_url: str) -> None:
    migrate(pg_url, "0002_snapshot_columns")
    engine = create_engine_from_url(pg_url)
    query = sa.text(
        "SELECT conname, convalidated FROM pg_constraint "
        "WHERE conrelid = 'session_summaries'::regclass AND contype IN ('c', 'f')"
    )
    with engine.connect() as conn:
        assert set(conn.execute(query).all()) == {
            (FK_NAME, False),
            (CK_NAME, False),
        }
    migrate(pg_url, "head")
    with engine.connect() as conn:
        assert all(valid for _name, valid in conn.execute(query).all())
    engine.dispose()


@pytest.mark.postgres
def test_an_invalid_index_left_by_a_failed_build_is_built_again_by_0004(pg_url: str) -> None:
    migrate(pg_url, "0003_backfill_session_snapshots")
    engine = create_engine_from_url(pg_url)
    name = "ix_session_summaries_snapshot_ip_type"
    with engine.connect() as conn:  # a concurrent build that failed leaves it INVALID
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.execute(sa.text("INSERT INTO session_summaries (session_id) VALUES ('a'), ('b')"))
        with pytest.raises(sa.exc.IntegrityError):
            conn.execute(
                sa.text(f"CREATE UNIQUE INDEX CONCURRENTLY {name} ON session_summaries ((1))")
            )
    up = run_alembic(pg_url, "upgrade", "head")
    assert up.returncode == 0, up.stderr
    assert f"index {name} is INVALID (an earlier build failed): rebuilding" in up.stderr
    with engine.connect() as conn:
        valid, definition = conn.execute(
            sa.text(
                "SELECT i.indisvalid, pg_get_indexdef(i.indexrelid) FROM pg_index i "
                "JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = :name"
            ),
            {"name": name},
        ).one()
    assert valid and definition.endswith("USING btree (snapshot_ip_type)")
    engine.dispose()


# --- the reviewed script sets what the online run sets -----------------------------------

# what bounds a lock wait or a statement, and the statements that wait for a lock
TIMEOUTS_AND_DDL = re.compile(
    r"^(SET (LOCAL )?(lock|statement)_timeout|RESET (lock|statement)_timeout|ALTER TABLE|"
    r"(CREATE|DROP) INDEX|VACUUM)"
)


def _statements_online(url: str, *args: str) -> list[str]:
    """The timeouts and DDL that ``alembic upgrade/downgrade`` sends, in order."""
    sent: list[str] = []

    def capture(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        flat = " ".join(statement.split())
        if TIMEOUTS_AND_DDL.match(flat):
            sent.append(flat)

    sa.event.listen(sa.Engine, "before_cursor_execute", capture)
    try:
        (command.upgrade if args[0] == "upgrade" else command.downgrade)(
            alembic_config(url), args[1]
        )
    finally:
        sa.event.remove(sa.Engine, "before_cursor_execute", capture)
    return sent


def _statements_offline(url: str, *args: str) -> list[str]:
    out = run_alembic(url, *args, "--sql")
    assert out.returncode == 0, out.stderr
    script = "\n".join(line for line in out.stdout.splitlines() if not line.startswith("--"))
    flat = [" ".join(s.split()) for s in script.split(";\n")]
    return [s for s in flat if TIMEOUTS_AND_DDL.match(s)]


def _under_timeouts(statements: list[str]) -> tuple[list[tuple[str, str, str]], set[str]]:
    """Each statement that takes a lock with the lock_timeout and statement_timeout in
    force for it, in a stable order (the ledger's order of the drops is not the script's);
    and what is left SET (not LOCAL, not reset) at the end."""
    timeouts: dict[str, str] = {}
    left_set = set()
    found = []
    for statement in statements:
        if m := re.match(r"SET (LOCAL )?(lock|statement)_timeout = (\d+)", statement):
            timeouts[m[2]] = m[3]
            if not m[1]:
                left_set.add(m[2])
        elif m := re.match(r"RESET (lock|statement)_timeout", statement):
            timeouts.pop(m[1], None)
            left_set.discard(m[1])
        elif not statement.startswith("VACUUM"):
            if statement.startswith("ALTER TABLE"):  # one ALTER, its actions in any order
                words = statement.split(" ", 3)  # ALTER TABLE name actions
                statement = " ".join([*words[:3], ", ".join(sorted(words[3].split(", ")))])
            found.append(
                (statement, timeouts.get("lock", "unset"), timeouts.get("statement", "unset"))
            )
    return sorted(found), left_set


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("start", "action", "span"),
    [
        ("0001_baseline", "upgrade", "0001_baseline:0002_snapshot_columns"),
        ("0003_backfill_session_snapshots", "upgrade", "0003_backfill_session_snapshots:head"),
        ("head", "downgrade", "head:0003_backfill_session_snapshots"),
        ("0002_snapshot_columns", "downgrade", "0002_snapshot_columns:0001_baseline"),
    ],
)
def test_the_offline_script_sets_the_timeouts_of_the_online_run(
    pg_url: str, start: str, action: str, span: str
) -> None:
    """Around each statement that takes a lock, the ``--sql`` script a DBA reviews sets
    the same ``lock_timeout`` and ``statement_timeout`` as the online run (which also
    retries): the short one before an ALTER and a VALIDATE, 0 (said explicitly) around a
    CONCURRENTLY build or drop, which waits for older transactions; all reset after."""
    migrate(pg_url, start)
    online, online_left = _under_timeouts(_statements_online(pg_url, action, span.split(":")[1]))
    offline, offline_left = _under_timeouts(_statements_offline(pg_url, action, span))
    assert offline, "no DDL in this revision?"
    assert offline == online
    assert not online_left and not offline_left, "a timeout is left set for the session"
    for statement, lock_timeout, statement_timeout in offline:
        if "CONCURRENTLY" in statement:
            assert (lock_timeout, statement_timeout) == ("0", "0"), statement
        else:
            assert lock_timeout == "3000", statement
