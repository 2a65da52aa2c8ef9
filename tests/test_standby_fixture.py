"""The streaming standby test fixture (:mod:`cowrieprocessor.testing.standby`) works:
rows written on the primary reach the standby, and pausing replay makes the replica lag
the primary reports grow, then drop back to 0 on resume.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from cowrieprocessor.testing.standby import StreamingStandby, replica_lag_bytes

MB = 1024 * 1024


def execute(url: str, *statements: str) -> list[tuple[object, ...]]:
    """Run statements in one transaction; the rows of the last one (if it returns any)."""
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            result = None
            for statement in statements:
                result = conn.execute(sa.text(statement))
            if result is None or not result.returns_rows:
                return []
            return [tuple(row) for row in result]
    finally:
        engine.dispose()


def test_rows_written_on_primary_are_readable_on_standby(standby: StreamingStandby) -> None:
    primary_url = standby.primary.url
    assert standby.url != primary_url
    assert execute(standby.url, "SELECT pg_is_in_recovery()") == [(True,)]
    names = execute(primary_url, "SELECT application_name, state FROM pg_stat_replication")
    assert names == [("cowrie-test-standby", "streaming")]

    execute(
        primary_url,
        "CREATE TABLE replicated (id int PRIMARY KEY, label text NOT NULL)",
        "INSERT INTO replicated SELECT g, 'row ' || g FROM generate_series(1, 1000) g",
    )
    standby.wait_caught_up(timeout=30)  # raises TimeoutError unless the lag reaches 0

    assert execute(standby.url, "SELECT count(*), max(label) FROM replicated") == [
        (1000, "row 999")
    ]
    with pytest.raises(sa.exc.InternalError, match="read-only transaction"):
        execute(standby.url, "INSERT INTO replicated VALUES (0, 'no')")


def test_paused_replay_makes_lag_grow_and_resume_clears_it(standby: StreamingStandby) -> None:
    primary_url = standby.primary.url
    execute(primary_url, "CREATE TABLE bulk (payload text NOT NULL)")
    standby.wait_caught_up(timeout=30)

    standby.pause_replay()
    try:
        paused_at = standby.replay_lsn()
        assert paused_at is not None
        # ~5 MB of heap, and about as much WAL (1000-byte values are not compressed).
        execute(
            primary_url,
            "INSERT INTO bulk SELECT repeat('x', 1000) FROM generate_series(1, 5000)",
        )
        written_to = execute(primary_url, "SELECT pg_current_wal_lsn()::text")[0][0]
        lag = replica_lag_bytes(primary_url)
        assert lag is not None
        assert lag > MB, f"lag {lag} bytes after writing ~5 MB with replay paused"
        # (>=, not ==: background WAL, e.g. a standby snapshot record, may come between.)
        later = standby.lag_bytes()
        assert later is not None
        assert later >= lag
        assert standby.replay_lsn() == paused_at
        # Nothing written since the pause is visible on the standby.
        assert execute(standby.url, "SELECT count(*) FROM bulk") == [(0,)]
    finally:
        standby.resume_replay()

    # Lag back to 0 (or TimeoutError), and the standby has replayed past the insert.
    standby.wait_caught_up(timeout=30)
    replayed_to = standby.replay_lsn()
    assert replayed_to is not None
    replayed_past = execute(
        primary_url, f"SELECT pg_wal_lsn_diff('{replayed_to}', '{written_to}') >= 0"
    )
    assert replayed_past == [(True,)], (replayed_to, written_to)
    assert execute(standby.url, "SELECT count(*), min(length(payload)) FROM bulk") == [(5000, 1000)]
