"""A partitioned session_summaries (PostgreSQL), and the join-back by key (Citus).

The kill -9 trials and the bad-input corpus run on partitioned tables and by key in
tests/reliability; here: what the revisions leave in the catalog (every index valid and
attached on every partition, the foreign key on the table, and exactly the catalog of
before after each downgrade), a rerun of an interrupted 0004, a run stopped in a later
partition resuming there (and ``status`` saying so), ``check``'s per-partition counts,
and the statements of the key path, which must be ones Citus can push down.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import sqlalchemy as sa

from cowrieprocessor.backfill import BACKFILL_JOB, BackfillKnobs, KnobError, run_backfill
from cowrieprocessor.backfill.progress import PROGRESS_TABLE
from cowrieprocessor.db import partitions
from cowrieprocessor.db.adoption import SNAPSHOT_INDEXES
from cowrieprocessor.db.engine import create_engine_from_url
from cowrieprocessor.testing.databases import Databases
from cowrieprocessor.testing.partitioned import HASH, KINDS, RANGE, partition_tables
from cowrieprocessor.testing.runners import Alembic, cowrie_db, cowrie_db_here, run_alembic
from cowrieprocessor.testing.seed import (
    at_0002,
    migrate,
    partitioned_at_0002,
    seed_random,
    snapshots,
)

SESSIONS, IPS = 2000, 200
FK = "fk_session_summaries_source_ip_ip_inventory"


def seed(conn: sa.Connection) -> None:
    seed_random(conn, SESSIONS, IPS, spread_days=400)


def plain_reference(url: str) -> dict[str, tuple[Any, ...]]:
    """The same data in plain tables, upgraded to head: what a partitioned run must give."""
    engine = at_0002(url)
    with engine.begin() as conn:
        seed(conn)
    migrate(url, "head")
    found = snapshots(engine)
    engine.dispose()
    return found


def seeded(dbs: Databases, kind: str | None = HASH) -> tuple[str, sa.Engine]:
    """A new database at 0002, partitioned (``kind``) before the deploy, seeded."""
    url = dbs.new()
    engine = partitioned_at_0002(url, kind) if kind else at_0002(url)
    with engine.begin() as conn:
        seed(conn)
    return url, engine


def seeded_url(dbs: Databases, kind: str | None) -> str:
    url, engine = seeded(dbs, kind)
    engine.dispose()
    return url


def catalog(engine: sa.Engine) -> set[tuple[Any, ...]]:
    """Every index (with its table and validity) and every constraint (with its table,
    validity and whether a parent's constraint owns it) on the two partitioned tables
    and their partitions."""
    with engine.connect() as conn:
        indexes = conn.execute(
            sa.text(
                """SELECT 'index', x.indrelid::regclass::text, i.relname, x.indisvalid,
                          EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = i.oid)
                   FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
                   JOIN pg_class t ON t.oid = x.indrelid
                   WHERE t.relname LIKE 'session_summaries%' OR t.relname LIKE 'raw_events%'"""
            )
        ).all()
        constraints = conn.execute(
            sa.text(
                """SELECT 'constraint', c.conrelid::regclass::text, c.conname, c.convalidated,
                          c.conparentid <> 0
                   FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid
                   WHERE t.relname LIKE 'session_summaries%' OR t.relname LIKE 'raw_events%'"""
            )
        ).all()
    return {tuple(row) for row in [*indexes, *constraints]}


@pytest.mark.parametrize("kind", KINDS)
def test_head_indexes_every_partition_and_each_downgrade_restores_the_catalog(
    pg_databases: Databases, kind: str
) -> None:
    url = pg_databases.new()
    migrate(url, "0001_baseline")
    engine = create_engine_from_url(url)
    with engine.begin() as conn:
        partition_tables(conn, kind)
    at_0001 = catalog(engine)
    migrate(url, "0002_snapshot_columns")
    at_0002_catalog = catalog(engine)
    with engine.begin() as conn:
        seed(conn)
        leaves = partitions.leaves(conn)
    assert leaves and len(leaves) == (8 if kind == HASH else 13)
    # 0002: the foreign key NOT VALID on each leaf (PostgreSQL refuses it on the table)
    keys = {row for row in at_0002_catalog if row[2] == FK}
    assert {row[1] for row in keys} == set(leaves)
    assert not any(row[3] for row in keys)

    out = run_alembic(url, "upgrade", "head", x={"batch_size": "100"})
    assert out.returncode == 0, out.stderr
    assert snapshots(engine) == plain_reference(pg_databases.new())
    at_head = catalog(engine)
    for name in SNAPSHOT_INDEXES:
        ours = [row for row in at_head if row[0] == "index" and row[2].startswith(name[:52])]
        parent = [row for row in ours if row[1] == "session_summaries" and row[2] == name]
        assert parent and parent[0][3], f"{name}: missing or INVALID on the table"
        on_leaves = {row[1] for row in ours if row[1] in leaves and row[3] and row[4]}
        assert on_leaves == set(leaves), f"{name}: not valid and attached on every partition"
    fk = [r for r in at_head if r[2] == FK]
    assert ("constraint", "session_summaries", fk[0][2], True, False) in fk
    assert all(r[3] and r[4] for r in fk if r[1] != "session_summaries")  # attached, valid
    assert not [r for r in at_head if r[3] is False], "something is left NOT VALID / INVALID"

    out = run_alembic(url, "downgrade", "0002_snapshot_columns", x={"batch_size": "100"})
    assert out.returncode == 0, out.stderr
    # as on a plain table, what 0004 validated stays validated, and the table's foreign
    # key that it added (attaching the leaves') stays until 0002's downgrade drops it
    # with the column: otherwise the catalog of before the upgrade
    after = {r if r[0] == "index" else r[:3] for r in catalog(engine)}
    before = {r if r[0] == "index" else r[:3] for r in at_0002_catalog}
    assert after - before == {("constraint", "session_summaries", FK)}
    assert before - after == set()
    assert all(snap == (None,) * 5 for snap in snapshots(engine).values())
    out = run_alembic(url, "downgrade", "0001_baseline")
    assert out.returncode == 0, out.stderr
    assert catalog(engine) == at_0001
    engine.dispose()


def test_an_interrupted_0004_is_finished_by_the_next_run(pg_databases: Databases) -> None:
    """What a crash in 0004 leaves (the table's index INVALID because not every
    partition has its own yet, one partition's build failed and left its index
    INVALID): the next run builds only what is missing, rebuilds the INVALID one, and
    attaches them; the downgrade then leaves none of them behind."""
    url, engine = seeded(pg_databases)
    migrate(url, "0003_backfill_session_snapshots")
    name = "ix_session_summaries_snapshot_asn"
    with engine.connect() as conn:
        leaves = partitions.leaves(conn) or []
        conn.execute(sa.text(f"CREATE INDEX {name} ON ONLY session_summaries (snapshot_asn)"))
        built = partitions.child_name(name, leaves[0])
        conn.execute(sa.text(f"CREATE INDEX {built} ON {leaves[0]} (snapshot_asn)"))
        conn.commit()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        broken = partitions.child_name(name, leaves[1])
        with pytest.raises(sa.exc.IntegrityError):  # a failed concurrent build: INVALID
            conn.execute(
                sa.text(f"CREATE UNIQUE INDEX CONCURRENTLY {broken} ON {leaves[1]} (snapshot_asn)")
            )
    before = catalog(engine)
    assert ("index", "session_summaries", name, False, False) in before
    assert ("index", leaves[1], broken, False, False) in before

    out = run_alembic(url, "upgrade", "head")
    assert out.returncode == 0, out.stderr
    assert f"index public.{broken} is INVALID" in out.stderr
    ours = [r for r in catalog(engine) if r[2] == name or r[2].startswith(name[:52] + "_")]
    assert len(ours) == 1 + len(leaves), "a duplicate index was built"
    assert all(r[3] for r in ours), "an index is left INVALID"
    with engine.connect() as conn:
        unique = conn.execute(
            sa.text("SELECT indisunique FROM pg_index WHERE indexrelid = to_regclass(:i)"),
            {"i": broken},
        ).scalar()
    assert unique is False  # rebuilt as ours, not kept as it was

    out = run_alembic(url, "downgrade", "0003_backfill_session_snapshots")
    assert out.returncode == 0, out.stderr
    left = [r for r in catalog(engine) if r[2] == name or r[2].startswith(name[:52] + "_")]
    assert not left
    engine.dispose()


def test_a_run_killed_in_a_later_partition_resumes_there(pg_databases: Databases) -> None:
    url, engine = seeded(pg_databases)
    with engine.connect() as conn:
        leaves = partitions.leaves(conn) or []
    want = plain_reference(pg_databases.new())
    # about 250 sessions a partition: batches of 40 give 7 a partition
    run = Alembic(url, "upgrade", "head", x={"batch_size": "40", "pause_ms": "50"})
    assert run.kill_after(engine, BACKFILL_JOB, 17)
    with engine.connect() as conn:
        leaf, last_key, phase = conn.execute(
            sa.text(f"SELECT leaf, last_key, phase FROM {PROGRESS_TABLE} WHERE job = :job"),
            {"job": BACKFILL_JOB},
        ).one()
    assert phase == "walk" and leaf in leaves[1:], (leaf, phase)
    at = leaves.index(leaf)
    status = cowrie_db("status", "--db", url)
    assert status.returncode == 0, status.stderr
    states = dict(re.findall(r"^\s+(session_summaries_p\d): (\w+)", status.stdout, re.M))
    assert [states[n] for n in leaves] == ["done"] * at + ["walking"] + ["pending"] * (
        len(leaves) - at - 1
    ), status.stdout
    got = snapshots(engine)
    assert any(got[k] != (None,) * 5 for k in got) and any(got[k] == (None,) * 5 for k in got)

    out = run_alembic(url, "upgrade", "head", x={"batch_size": "40"})
    assert out.returncode == 0, out.stderr
    assert f"resuming walk in partition {leaf} after {last_key!r}" in out.stderr
    assert snapshots(engine) == want
    engine.dispose()


def test_a_partition_gone_between_two_runs_is_skipped_by_name(pg_databases: Databases) -> None:
    """The run stopped in a partition that is detached before the rerun: the rerun goes
    on with the next partition by name and fills every session still in the table."""
    url, engine = seeded(pg_databases)
    want = plain_reference(pg_databases.new())
    run = Alembic(url, "upgrade", "0003_backfill_session_snapshots", x={"batch_size": "40"})
    assert run.kill_after(engine, BACKFILL_JOB, 10)
    with engine.begin() as conn:
        leaf = conn.execute(
            sa.text(f"SELECT leaf FROM {PROGRESS_TABLE} WHERE job = :job"), {"job": BACKFILL_JOB}
        ).scalar_one()
        conn.execute(sa.text(f"ALTER TABLE session_summaries DETACH PARTITION {leaf}"))
        gone = set(conn.execute(sa.text(f"SELECT session_id FROM {leaf}")).scalars())
    out = run_alembic(url, "upgrade", "head", x={"batch_size": "40"})
    assert out.returncode == 0, out.stderr
    assert f"partition {leaf}, where the run stopped, is gone: going on with" in out.stderr
    assert snapshots(engine) == {k: v for k, v in want.items() if k not in gone}
    engine.dispose()


def test_a_saved_partition_after_every_partition_still_finishes_the_phase(
    pg_databases: Databases,
) -> None:
    """Nothing follows the gone partition by name: the last partition is walked again,
    and its last range moves the job on (a range walked twice changes nothing)."""
    url, engine = seeded(pg_databases)
    want = plain_reference(pg_databases.new())
    run = Alembic(url, "upgrade", "0003_backfill_session_snapshots", x={"batch_size": "40"})
    assert run.kill_after(engine, BACKFILL_JOB, 5)
    with engine.begin() as conn:
        conn.execute(
            sa.text(f"UPDATE {PROGRESS_TABLE} SET leaf = 'session_summaries_zz' WHERE job = :j"),
            {"j": BACKFILL_JOB},
        )
    out = run_alembic(url, "upgrade", "head", x={"batch_size": "40"})
    assert out.returncode == 0, out.stderr
    assert "session_summaries_zz, where the run stopped, is gone: going on with " in out.stderr
    assert "session_summaries_p7" in out.stderr
    with engine.connect() as conn:
        phase = conn.execute(
            sa.text(f"SELECT phase FROM {PROGRESS_TABLE} WHERE job = :j"), {"j": BACKFILL_JOB}
        ).scalar_one()
    assert phase == "done"
    # the walk skipped p0..p7 after the kill; the catch-up pass found what it missed
    assert snapshots(engine) == want
    engine.dispose()


def test_a_partition_whose_old_rows_break_the_key_keeps_it_not_valid(
    pg_databases: Databases,
) -> None:
    """Old data the deploy did not write (a row whose source_ip is not in ip_inventory,
    which the NOT VALID key never checked): that leaf's validation fails and its key
    stays NOT VALID, named with the row and the statement to run once it is fixed; every
    other leaf's key is validated, the table gets no key, and the deploy succeeds."""
    url, engine = seeded(pg_databases)
    migrate(url, "0003_backfill_session_snapshots")
    with engine.begin() as conn:
        session_id, leaf = conn.execute(
            sa.text(
                "SELECT session_id, tableoid::regclass::text FROM session_summaries "
                "ORDER BY session_id LIMIT 1"
            )
        ).one()
        conn.execute(sa.text("SET LOCAL session_replication_role = replica"))  # no FK trigger
        conn.execute(
            sa.text(
                "UPDATE session_summaries SET source_ip = '203.0.113.250' WHERE session_id = :s"
            ),
            {"s": session_id},
        )
    out = run_alembic(url, "upgrade", "head")
    assert out.returncode == 0, out.stderr
    assert (
        f"of partition {leaf} left NOT VALID: 1 rows violate it (e.g. session_id {session_id!r})"
    ) in out.stderr
    assert f"then run: ALTER TABLE public.{leaf} VALIDATE CONSTRAINT {FK}" in out.stderr
    assert "so session_summaries gets no foreign key" in out.stderr
    keys = {(r[1], r[3]) for r in catalog(engine) if r[0] == "constraint" and r[2] == FK}
    with engine.connect() as conn:
        leaves = partitions.leaves(conn) or []
    assert keys == {(name, name != leaf) for name in leaves}  # none on the table
    engine.dispose()


def test_check_counts_each_partition(pg_databases: Databases) -> None:
    url, engine = seeded(pg_databases, RANGE)
    engine.dispose()
    out = cowrie_db("check", "--db", url)
    assert out.returncode == 0, out.stderr
    rows = re.findall(
        r"^  (session_summaries_\w+): ([\d,]+) sessions, ([\d,]+) needing", out.stdout, re.M
    )
    assert len(rows) == 13, out.stdout  # twelve months and the DEFAULT partition
    assert sum(int(s.replace(",", "")) for _n, s, _m in rows) == SESSIONS
    assert all(int(s.replace(",", "")) > 0 for _n, s, _m in rows), "a month with no session"
    assert "Partitioned: 13 leaf partition(s)" in out.stdout
    assert "Join-back:  by ctid (the citus extension is not installed)" in out.stdout
    assert (
        "Walk order: by session_id (walk_order=auto: session_summaries is partitioned: "
        "its leaves are walked by key)" in out.stdout
    )


# --- the key path: statements Citus can push down ------------------------------------

BATCH_TABLES = ("session_summaries", "raw_events")
# the next bound and the catch-up's list (sorted by ``session_id || ''``): a top-level
# ORDER BY ... LIMIT, which Citus runs on each shard and merges
TOP_LEVEL_LIMIT = re.compile(r"ORDER BY (s\.)?session_id( \|\| '')? LIMIT \S+( OFFSET \S+)?$")


def statements_of_a_run(url: str, join_back: str) -> list[str]:
    """Every statement a backfill run sends (in this process), in order."""
    engine = create_engine_from_url(url)
    sent: list[str] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def capture(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        sent.append(statement)

    knobs = BackfillKnobs.from_sources({"batch_size": "300", "join_back": join_back}, {})
    result = run_backfill(engine, knobs)
    assert result.rows_updated > 0
    engine.dispose()
    return sent


@pytest.mark.parametrize("partition", [None, HASH])
def test_the_key_path_sends_only_statements_citus_can_push_down(
    pg_databases: Databases, partition: str | None
) -> None:
    """On the key path, every statement that reads or writes the distributed tables
    has no ctid, no CTE and no LIMIT in a subquery (only the next bound's and the
    catch-up list's top-level ``ORDER BY session_id LIMIT``); raw_events is read only
    correlated on session_id; no volatile function. The ctid path, by contrast, uses
    ctid, CTEs and LIMIT in a subquery: the check can tell the two apart."""
    url, engine = seeded(pg_databases, partition)
    engine.dispose()
    by_key = statements_of_a_run(url, "key")
    batches = [s for s in by_key if "SET source_ip = COALESCE" in " ".join(s.split())]
    assert batches, "no batch UPDATE was sent"
    touching = [s for s in by_key if any(t in s for t in BATCH_TABLES)]
    raw_event_reads = 0
    for statement in touching:
        flat = " ".join(statement.split())
        problems = [
            what
            for what, bad in (
                ("ctid", "ctid" in flat),
                ("a CTE", re.search(r"\bWITH\b", flat) is not None),
                ("a volatile function", re.search(r"\b(random|clock_timestamp|nextval)\(", flat)),
                ("LIMIT in a subquery", "LIMIT" in TOP_LEVEL_LIMIT.sub("", flat)),
            )
            if bad
        ]
        reads = re.findall(r"FROM raw_events e WHERE (.*?)(?:\)|$)", flat)
        raw_event_reads += len(reads)
        for where in reads:
            if not re.search(r"\be\.session_id = c\.session_id\b", where):
                problems.append(f"raw_events read without session_id = c.session_id: {where}")
        assert not problems, f"{problems}: {flat[:300]}"
    assert raw_event_reads >= 2 * len(batches)  # the counts and the UPDATE of each batch
    # the same data by ctid: the ctid path does use what the key path must not
    by_ctid = statements_of_a_run(seeded_url(pg_databases, partition), "ctid")
    assert any("ctid" in s and "WITH" in s and "LIMIT 1\n" in s for s in by_ctid)


@pytest.mark.parametrize("bad", ["tid", "KEYS", "", "ctid; DROP TABLE x"])
def test_a_bad_join_back_is_refused_by_name(bad: str) -> None:
    with pytest.raises(KnobError, match=r"join_back=.* is not one of: auto, ctid, key"):
        BackfillKnobs.from_sources({"join_back": bad}, {})
    out = cowrie_db_here(
        "upgrade", "--db", "sqlite:////nonexistent/x.sqlite", "--join-back", bad or " "
    )
    assert out.returncode == 2, out.stderr
    assert "join_back" in out.stderr
