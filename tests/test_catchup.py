"""The catch-up pass: what the walk could not see is filled, by listing the sessions still
without ``source_ip`` once (PostgreSQL) or walking every range again (SQLite)."""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

import pytest
import sqlalchemy as sa

from cowrieprocessor.backfill import BackfillKnobs, BatchReport, run_backfill
from cowrieprocessor.backfill.progress import CATCHUP, WALK
from cowrieprocessor.db.engine import create_engine_from_url
from cowrieprocessor.testing.oracle import current_snapshots, expected_snapshots
from cowrieprocessor.testing.seed import add_ip, add_session, at_0002, read, seed_random


def test_sessions_inserted_behind_the_walk_are_caught_up(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = at_0002(db_url)
    with engine.begin() as conn:
        seed_random(conn, 3_000, 300, seed=3)
    inserted: list[str] = []
    percents: list[float] = []
    writer = create_engine_from_url(db_url)

    def on_batch(report: BatchReport) -> None:
        percents.append(report.progress.percent)
        if report.phase == WALK and report.batch == 5 and report.hi is not None:
            # three sessions the walk has passed (keys before the saved position), and
            # their IP in the inventory: only the catch-up can fill them
            with writer.begin() as conn:
                add_ip(conn, "198.51.100.7", asn=4134, country="NL")
                for n in range(3):
                    sid = f"000000000{n:03d}"
                    add_session(conn, sid, meta_ip="198.51.100.7")
                    inserted.append(sid)

    knobs = BackfillKnobs.from_sources({"batch_size": "200"}, {})
    with caplog.at_level(logging.INFO, logger="cowrieprocessor.backfill"):
        result = run_backfill(engine, knobs, on_batch=on_batch)
    writer.dispose()
    engine.dispose()
    got: dict[str, Any] = read(db_url, current_snapshots)
    want: dict[str, Any] = read(db_url, expected_snapshots)
    assert len(inserted) == 3
    for sid in inserted:
        assert got[sid][0] == "198.51.100.7" and got[sid][1] == 4134, sid
    assert got == want
    assert percents == sorted(percents) and percents[-1] == 100.0  # the job's percent
    catchup = [r.getMessage() for r in caplog.records if "catchup:" in r.getMessage()]
    still_null = read(
        db_url,
        lambda c: int(
            c.execute(
                sa.text("SELECT count(*) FROM session_summaries WHERE source_ip IS NULL")
            ).scalar_one()
        ),
    )
    if engine.dialect.name == "postgresql":
        # one scan listed the walk's unmatched sessions (still without source_ip at the
        # end) and the three new ones
        listed = [m for m in catchup if "sessions without source_ip to look at again" in m]
        assert len(listed) == 1, catchup
        found = re.search(r"catchup: (\d+) sessions", listed[0])
        assert found is not None and int(found.group(1)) == still_null + 3, (listed, still_null)
    assert result.matched >= 3


def test_the_catch_up_resumes_from_its_position(db_url: str) -> None:
    """Stopped in the catch-up pass, a rerun lists again what is after its position."""
    engine = at_0002(db_url)
    with engine.begin() as conn:
        seed_random(conn, 1_000, 60, seed=9)
    stop_after: dict[str, int] = {"catchup": 0}
    stop = threading.Event()

    def on_batch(report: BatchReport) -> None:
        if report.phase == CATCHUP:
            stop_after["catchup"] += 1
            if stop_after["catchup"] == 2:
                stop.set()

    knobs = BackfillKnobs.from_sources({"batch_size": "8"}, {})
    with pytest.raises(Exception, match="rerun to resume"):
        run_backfill(engine, knobs, stop=stop, on_batch=on_batch)
    assert stop_after["catchup"] == 2
    result = run_backfill(engine, knobs)
    engine.dispose()
    assert result.resumed
    assert read(db_url, current_snapshots) == read(db_url, expected_snapshots)
