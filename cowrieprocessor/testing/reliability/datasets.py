"""The reliability datasets: seeded databases at 0002 and their uninterrupted outcome.

A :class:`Dataset` is a template database (seeded, never migrated itself) that each test
copies, and the snapshots an uninterrupted run gives it: the reference every faulted run
is compared with. Observed datasets also carry how many batches the uninterrupted
upgrade and downgrade committed and when they ran: the kill trials aim at those.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import sqlalchemy as sa

from cowrieprocessor.backfill import BACKFILL_JOB, CLEAR_JOB
from cowrieprocessor.backfill.progress import CATCHUP, WALK
from cowrieprocessor.db.engine import create_engine_from_url
from cowrieprocessor.testing.databases import Databases
from cowrieprocessor.testing.reliability.outcomes import BEFORE, NULLS, Snaps, differences
from cowrieprocessor.testing.runners import Alembic, progress_state
from cowrieprocessor.testing.seed import (
    at_0002,
    migrate,
    partitioned_at_0002,
    snapshots,
)

# PostgreSQL beyond one plain table: partitioned before the deploy, and the join-back by
# key that Citus needs (docs/scale-out.md). (partitioning, join_back)
SCALE_OUT: list[tuple[str | None, str]] = [
    ("hash", "ctid"),
    ("range", "ctid"),
    (None, "key"),
    ("hash", "key"),
]
SCALE_OUT_IDS = [f"{p or 'plain'}-{j}" for p, j in SCALE_OUT]


@dataclass(frozen=True)
class Reference:
    """An uninterrupted command: how many batches it committed, and between which
    seconds after its start they were seen running."""

    batches: int
    first: float
    last: float


@dataclass
class Dataset:
    """A seeded database at 0002 (never migrated itself) and its uninterrupted outcome."""

    dbs: Databases
    template: str
    sessions: int
    knobs: dict[str, str]
    reference: Snaps
    up: Reference = field(default_factory=lambda: Reference(0, 0.0, 0.0))
    down: Reference = field(default_factory=lambda: Reference(0, 0.0, 0.0))
    rerun: str = ""  # observed datasets: the reference's copy, back at 0002, cleared
    partition: str | None = None  # session_summaries partitioned by hash or range

    @property
    def dialect(self) -> str:
        return self.dbs.dialect

    def clone(self) -> str:
        return self.dbs.clone(self.template)


def build_dataset(
    dbs: Databases,
    seeder: Callable[[sa.Connection], None],
    knobs: Mapping[str, str],
    *,
    observe: bool,
    partition: str | None = None,
) -> Dataset:
    """Seed a template, then run it uninterrupted (upgrade, then downgrade) on a copy.

    With ``observe``, both go through the ``alembic`` command, timed and with their
    batches counted: the kill trials draw their random moments from those.
    ``partition`` (hash or range): session_summaries and raw_events are partitioned
    before the deploy (at 0001), and the uninterrupted run must give exactly what the
    same data gives in plain tables (checked here, as is ``join_back=key`` against the
    default ctid join-back).
    """
    template = dbs.new()
    engine = partitioned_at_0002(template, partition) if partition else at_0002(template)
    with engine.begin() as conn:
        seeder(conn)
    with engine.connect() as conn:
        sessions = int(conn.execute(sa.text("SELECT count(*) FROM session_summaries")).scalar_one())
    engine.dispose()
    ds = Dataset(dbs, template, sessions, dict(knobs), {}, partition=partition)
    url = ds.clone()
    engine = create_engine_from_url(url)
    if observe:
        ds.up = observed_run(url, ["upgrade", "head"], knobs, BACKFILL_JOB)
    else:
        migrate(url, "head")
    ds.reference = snapshots(engine)
    matched = sum(1 for snap in ds.reference.values() if snap[0] is not None)
    assert matched > 0.8 * sessions, "the reference run matched too few sessions"
    if partition or knobs.get("join_back") == "key":  # the same as plain tables, by ctid
        plain = at_0002(dbs.new())
        with plain.begin() as conn:
            seeder(conn)
        migrate(plain.url.render_as_string(hide_password=False), "head")
        lost = differences(ds.reference, snapshots(plain))
        plain.dispose()
        assert not lost, f"{partition}, {dict(knobs)}: {len(lost)} rows differ from plain tables"
    if observe:
        ds.down = observed_run(url, ["downgrade", BEFORE], knobs, CLEAR_JOB)
        assert all(snap == NULLS for snap in snapshots(engine).values())
        ds.rerun = url
    engine.dispose()
    return ds


def observed_run(url: str, args: list[str], knobs: Mapping[str, str], job: str) -> Reference:
    """Run to the end, counting the batches of ``job`` and timing when they ran."""
    engine = create_engine_from_url(url)
    run = Alembic(url, *args, x=knobs)
    batches, seen = 0, []
    while run.running():
        at = time.monotonic() - run.started
        phase, _key, done = progress_state(engine, job)
        if phase in (WALK, CATCHUP):
            seen.append(at)
        batches = max(batches, done)
        time.sleep(0.01)
    rc = run.wait()
    engine.dispose()
    assert rc == 0, run.output
    assert seen, f"no batch of {job} was ever seen running:\n{run.output}"
    return Reference(batches, seen[0], seen[-1])
