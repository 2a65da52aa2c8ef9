"""The walk by table blocks (``walk_order=blocks``, PostgreSQL 14+): it writes what the
walk by key writes, with one worker and with several; rows another writer moves out of
its reach are caught by the catch-up; a stopped walk resumes, and one whose table was
rewritten walks again with a new plan; where it cannot walk it is refused by name.
"""

from __future__ import annotations

import logging
import re
import threading
import time

import pytest
import sqlalchemy as sa

from cowrieprocessor.backfill import BACKFILL_JOB, BackfillKnobs, KnobError, blocks, run_backfill
from cowrieprocessor.backfill.blocks import ROUNDS, ROUNDS_NOT_HOT, BlockPlan, owns
from cowrieprocessor.backfill.errors import BackfillInterrupted
from cowrieprocessor.backfill.progress import load, load_workers
from cowrieprocessor.backfill.walker import BatchReport
from cowrieprocessor.testing.databases import Databases
from cowrieprocessor.testing.partitioned import HASH
from cowrieprocessor.testing.runners import run_alembic
from cowrieprocessor.testing.seed import at_0002, partitioned_at_0002, seed_random, snapshots

pytestmark = pytest.mark.postgres
SESSIONS, IPS = 3000, 300


def seeded(dbs: Databases) -> sa.Engine:
    engine = at_0002(dbs.new())
    with engine.begin() as conn:
        seed_random(conn, SESSIONS, IPS, spread_days=400)
    return engine


def knobs(**given: str) -> BackfillKnobs:
    return BackfillKnobs.from_sources({"batch_size": "150", **given}, {})


def counts(result: object) -> tuple[int, ...]:
    names = ("rows_updated", "matched", "unmatched_no_ip", "unmatched_not_in_inventory")
    return tuple(getattr(result, n) for n in names)


@pytest.mark.parametrize(
    ("workers", "indexed"), [("1", False), ("2", False), ("2", True)], ids=["1", "2", "2-indexed"]
)
def test_a_walk_by_blocks_writes_what_the_walk_by_key_writes(
    pg_databases: Databases, workers: str, indexed: bool
) -> None:
    by_key, by_blocks = seeded(pg_databases), seeded(pg_databases)
    if indexed:  # as the field's databases: no update is HOT, and fewer rounds
        for engine in (by_key, by_blocks):
            with engine.begin() as conn:
                conn.execute(sa.text("CREATE INDEX snap_asn ON session_summaries (snapshot_asn)"))
    key_reports: list[BatchReport] = []
    block_reports: list[BatchReport] = []
    expected = run_backfill(by_key, knobs(walk_order="key"), on_batch=key_reports.append)
    result = run_backfill(
        by_blocks, knobs(walk_order="blocks", workers=workers), on_batch=block_reports.append
    )

    assert snapshots(by_blocks) == snapshots(by_key)
    assert counts(result) == counts(expected) and result.rows_updated > 0
    # its batches were of blocks, each within one round of a segment
    walked = [r for r in block_reports if r.phase == "walk"]
    assert len(walked) > 16 and all(owns(r.hi) for r in walked if r.hi is not None)
    # the catch-up looked at the same sessions: none of the rows its own batches wrote
    # (the rollback record tells them), although they are newer than the walk's start
    # and ~40% of them still lack a column the inventory does not have

    def looked_again(reports: list[BatchReport]) -> int:
        return sum(r.counts.candidates for r in reports if r.phase == "catchup")

    assert looked_again(block_reports) == looked_again(key_reports) > 0
    with by_blocks.connect() as conn:
        state = load(conn, BACKFILL_JOB)
    assert state is not None and state.phase == "done"
    plan = BlockPlan.decode(state.walk_plan)
    rounds = ROUNDS_NOT_HOT if indexed else ROUNDS
    assert plan is not None and plan.rounds == rounds and plan.segments >= int(workers)
    by_key.dispose()
    by_blocks.dispose()


@pytest.mark.parametrize(
    ("index", "rounds"),
    [
        ("CREATE INDEX {} ON session_summaries (snapshot_asn)", ROUNDS_NOT_HOT),
        (
            "CREATE INDEX {} ON session_summaries (first_event_at) INCLUDE (source_ip)",
            ROUNDS_NOT_HOT,
        ),
        ("CREATE UNIQUE INDEX {} ON session_summaries (session_id, enrichment_at)", ROUNDS_NOT_HOT),
        # not counted: a BRIN index, a column read only by an expression or a predicate
        ("CREATE INDEX {} ON session_summaries USING brin (enrichment_at)", ROUNDS),
        ("CREATE INDEX {} ON session_summaries (lower(snapshot_country))", ROUNDS),
        ("CREATE INDEX {} ON session_summaries (session_id) WHERE source_ip IS NULL", ROUNDS),
    ],
    ids=["key", "include", "unique", "brin", "expression", "predicate"],
)
def test_the_rounds_follow_whether_an_index_makes_every_update_non_hot(
    pg_databases: Databases, index: str, rounds: int
) -> None:
    engine = at_0002(pg_databases.new())
    name = 'snap "idx"; DROP TABLE raw_events; --'  # a name is shown quoted, never run
    with engine.begin() as conn:
        assert blocks.rounds(conn, "session_summaries") == (
            ROUNDS,
            "no index has a snapshot column",
        )
        quoted = conn.dialect.identifier_preparer.quote(name)
        conn.execute(sa.text(index.format(quoted)))
        count, why = blocks.rounds(conn, "session_summaries")
        assert count == rounds
        if rounds == ROUNDS_NOT_HOT:
            assert why == f"no update is HOT: index {quoted} has a snapshot column"
            # an index that defer_indexes drops before the walk does not count
            assert blocks.rounds(conn, "session_summaries", [name])[0] == ROUNDS
        assert sa.inspect(conn).has_table("raw_events")
    engine.dispose()


MOVED = 25
WIDE = "x" * 1500  # no longer fits its page: the new version goes to the table's end


def move_out_of_reach(conn: sa.Connection) -> list[str]:
    """Another writer: give sessions the walk has not reached a source_ip (the loader's)
    and a wider row, which moves them past the last block the walk was planned over;
    their other four columns stay NULL. Returns their ids."""
    ip = conn.execute(
        sa.text(
            "SELECT ip_address FROM ip_inventory WHERE current_asn IS NOT NULL "
            "ORDER BY ip_address LIMIT 1"
        )
    ).scalar_one()
    moved = list(
        conn.execute(
            sa.text(
                "SELECT session_id FROM session_summaries WHERE source_ip IS NULL "
                "AND (ctid::text::point)[0] < (SELECT max((ctid::text::point)[0]) - 1 "
                "FROM session_summaries) ORDER BY session_id LIMIT :n"
            ),
            {"n": MOVED},
        ).scalars()
    )
    conn.execute(
        sa.text(
            "UPDATE session_summaries SET source_ip = :ip, matcher = 'moved', "
            "source_files = to_json(CAST(:wide AS text)) WHERE session_id = ANY(:ids)"
        ),
        {"ip": ip, "wide": WIDE, "ids": moved},
    )
    return moved


def test_rows_moved_out_of_its_reach_are_caught_by_the_catch_up(pg_databases: Databases) -> None:
    by_key, by_blocks = seeded(pg_databases), seeded(pg_databases)
    with by_key.begin() as conn:  # the oracle: the same write, before a walk by key
        move_out_of_reach(conn)
    run_backfill(by_key, knobs(walk_order="key"))
    moved: list[str] = []
    last_block: list[int] = []

    def write_during_the_walk(report: BatchReport) -> None:
        if report.phase == "walk" and not moved:
            with by_blocks.begin() as conn:
                moved.extend(move_out_of_reach(conn))
                last_block.append(
                    conn.execute(
                        sa.text(
                            "SELECT min((ctid::text::point)[0]) FROM session_summaries "
                            "WHERE session_id = ANY(:ids)"
                        ),
                        {"ids": moved},
                    ).scalar_one()
                )

    run_backfill(by_blocks, knobs(walk_order="blocks"), on_batch=write_during_the_walk)

    with by_blocks.connect() as conn:
        state = load(conn, BACKFILL_JOB)
    assert state is not None
    plan = BlockPlan.decode(state.walk_plan)
    assert plan is not None
    # the scenario: every moved row now lies past the blocks the table had when the walk
    # began (and, written since, is left to the catch-up wherever it lies)
    assert len(moved) == MOVED and last_block[0] >= plan.blocks
    got, expected = snapshots(by_blocks), snapshots(by_key)
    assert all(got[s][1] is not None for s in moved)  # their asn came from the inventory
    assert got == expected
    by_key.dispose()
    by_blocks.dispose()


class HeldWrite:
    """Another writer's UPDATE of one session, left uncommitted; committed as soon as
    some other backend waits for its row lock: the waiting UPDATE then finds a newer
    version of the row than the one its statement read."""

    def __init__(self, engine: sa.Engine, session_id: str) -> None:
        self.engine, self.conn = engine, engine.connect()
        self.conn.execute(
            sa.text(
                "UPDATE session_summaries SET event_count = event_count + 1 WHERE session_id = :s"
            ),
            {"s": session_id},
        )
        self.released = threading.Event()
        self.thread = threading.Thread(target=self._release_when_waited_for)
        self.thread.start()

    def _release_when_waited_for(self) -> None:
        with self.engine.connect() as watch:
            for _ in range(600):
                waiting = watch.execute(
                    sa.text("SELECT count(*) FROM pg_locks WHERE NOT granted")
                ).scalar_one()
                watch.rollback()
                if waiting:
                    self.conn.commit()
                    self.released.set()
                    break
                time.sleep(0.05)
        self.conn.close()


def test_a_row_another_writer_changes_while_the_catch_up_reads_it_is_read_again(
    pg_databases: Databases, caplog: pytest.LogCaptureFixture
) -> None:
    """The catch-up is the last pass: a row it read that another writer changed before
    its UPDATE reached it (left as it is by the join-back by ctid) is read again in the
    same batch, not lost. The benchmark's writer beside two workers lost 5 of 1.68M so."""
    caplog.set_level(logging.INFO, logger="cowrieprocessor")
    reference, engine = seeded(pg_databases), seeded(pg_databases)
    run_backfill(reference, knobs(walk_order="key"))
    with engine.connect() as conn:  # a matched session in the table's last block
        target = conn.execute(
            sa.text(
                "SELECT s.session_id FROM session_summaries s "
                "JOIN ip_inventory i ON i.ip_address = s.enrichment #>> "
                "'{session_metadata,source_ip}' WHERE i.current_asn IS NOT NULL "
                "ORDER BY s.ctid DESC LIMIT 1"
            )
        ).scalar_one()
    held: list[HeldWrite] = []

    def write(report: BatchReport) -> None:
        if report.phase == "walk" and report.batch == 1:  # moved: the catch-up's
            with engine.begin() as conn:
                conn.execute(
                    sa.text(
                        "UPDATE session_summaries SET event_count = event_count "
                        "WHERE session_id = :s"
                    ),
                    {"s": target},
                )
        if report.phase == "walk" and report.hi is None:  # the walk's last batch
            held.append(HeldWrite(engine, target))

    run_backfill(engine, knobs(), on_batch=write)  # auto: by blocks
    held[0].thread.join()
    assert held[0].released.is_set()
    assert snapshots(engine)[target] == snapshots(reference)[target]
    assert snapshots(engine) == snapshots(reference)
    assert re.search(r"catchup batch \d+.*1 session\(s\) changed by another writer", caplog.text)
    reference.dispose()
    engine.dispose()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_stopped_walk_by_blocks_resumes_where_it_stopped(
    pg_databases: Databases, workers: str, caplog: pytest.LogCaptureFixture
) -> None:
    reference, engine = seeded(pg_databases), seeded(pg_databases)
    run_backfill(reference, knobs(walk_order="key"))
    stop = threading.Event()
    seen: list[BatchReport] = []

    def stop_after_some(report: BatchReport) -> None:
        seen.append(report)
        if len(seen) == 7:
            stop.set()

    given = knobs(walk_order="blocks", workers=workers)
    with pytest.raises(BackfillInterrupted, match="rerun to resume"):
        run_backfill(engine, given, stop=stop, on_batch=stop_after_some)
    with engine.connect() as conn:
        rows = [load(conn, BACKFILL_JOB), *load_workers(conn, BACKFILL_JOB)]
    saved = [r for r in rows if r is not None and r.batches > 0]
    assert saved and all(owns(r.last_key) and r.walk_plan for r in saved)

    caplog.set_level(logging.INFO, logger="cowrieprocessor.backfill")
    resumed = run_backfill(engine, knobs(workers=workers))  # the order it began in
    assert resumed.resumed
    if workers == "1":  # where, as an operator reads it (workers: each stripe's row)
        assert re.search(r"resuming walk by blocks at block \d+, round \d/8", caplog.text)
    assert snapshots(engine) == snapshots(reference)
    reference.dispose()
    engine.dispose()


def test_a_table_rewritten_between_runs_is_walked_again_with_a_new_plan(
    pg_databases: Databases, caplog: pytest.LogCaptureFixture
) -> None:
    reference, engine = seeded(pg_databases), seeded(pg_databases)
    run_backfill(reference, knobs(walk_order="key"))
    stop = threading.Event()

    def stop_soon(report: BatchReport) -> None:
        if report.batch == 3:
            stop.set()

    given = knobs(walk_order="blocks")
    with pytest.raises(BackfillInterrupted):
        run_backfill(engine, given, stop=stop, on_batch=stop_soon)
    with engine.connect() as conn:
        before = load(conn, BACKFILL_JOB)
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(
            sa.text("VACUUM FULL session_summaries")
        )
    run_backfill(engine, given)

    assert "was rewritten since the walk by blocks began" in caplog.text
    with engine.connect() as conn:
        after = load(conn, BACKFILL_JOB)
    assert before is not None and after is not None
    old, new = BlockPlan.decode(before.walk_plan), BlockPlan.decode(after.walk_plan)
    assert old is not None and new is not None and old.filenode != new.filenode
    assert snapshots(engine) == snapshots(reference)
    reference.dispose()
    engine.dispose()


def test_where_it_cannot_walk_it_is_refused_by_name_before_any_write(
    pg_databases: Databases, sqlite_databases: Databases
) -> None:
    sqlite = at_0002(sqlite_databases.new())
    with pytest.raises(KnobError, match="walk_order=blocks: SQLite walks its rowid order"):
        run_backfill(sqlite, knobs(walk_order="blocks"))
    hashed = partitioned_at_0002(pg_databases.new(), HASH)
    with pytest.raises(KnobError, match="walk_order=blocks: session_summaries is partitioned"):
        run_backfill(hashed, knobs(walk_order="blocks"))
    plain = seeded(pg_databases)
    with pytest.raises(KnobError, match="rollback record"):
        run_backfill(plain, knobs(walk_order="blocks"), keep_record=False)
    for engine in (sqlite, hashed, plain):
        with engine.connect() as conn:
            assert not sa.inspect(conn).has_table("cowrie_backfill_progress")
        engine.dispose()
    with pytest.raises(KnobError, match=r"walk_order='wobble'.*not one of: auto, key, blocks"):
        knobs(walk_order="wobble")


def test_auto_walks_by_blocks_where_it_can_and_by_key_saying_why_where_not(
    pg_databases: Databases, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cowrieprocessor")
    plain = seeded(pg_databases)
    reports: list[BatchReport] = []
    run_backfill(plain, knobs(), on_batch=reports.append)  # walk_order=auto, the default
    assert all(owns(r.hi) for r in reports if r.phase == "walk" and r.hi is not None)
    assert "block ranges" in caplog.text
    assert "walk order: by session_id" not in caplog.text

    unrecorded = seeded(pg_databases)
    reports.clear()
    run_backfill(unrecorded, knobs(), keep_record=False, on_batch=reports.append)
    assert not any(owns(r.hi) for r in reports if r.hi is not None)
    assert (
        "walk order: by session_id (walk_order=auto: it tells its own writes by the "
        "rollback record" in caplog.text
    )
    hashed = partitioned_at_0002(pg_databases.new(), HASH)
    with hashed.begin() as conn:
        seed_random(conn, 300, 30)
    run_backfill(hashed, knobs())
    assert "(walk_order=auto: session_summaries is partitioned" in caplog.text
    for engine in (plain, unrecorded, hashed):
        engine.dispose()


def test_the_offline_script_refuses_a_walk_by_blocks() -> None:
    span = "0002_snapshot_columns:head"
    done = run_alembic(
        "postgresql://u:pw@h/db", "upgrade", span, "--sql", x={"walk_order": "blocks"}
    )
    assert done.returncode != 0
    assert "walk_order=blocks: the offline script (--sql) walks ranges of session_id" in done.stderr
