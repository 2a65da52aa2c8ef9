"""Reliability under real faults and load: nothing is lost, nothing is half-written.

Every fault here is real, on a real database, with no mocks: ``kill -9`` of the
``alembic`` process at random moments, ``pg_terminate_backend`` of the backfill's backend
while its UPDATE runs, row locks and SQLite write locks held by another transaction or
process, a tiny ``statement_timeout``, a file-size limit (the disk is full), a read-only
database file, and a writer ingesting sessions while the backfill runs. After each fault
the run is finished by rerunning the real command, and every row's five snapshot columns
are compared with an uninterrupted run over the same data.

What the tests measure is printed (``pytest -s``) and, when ``COWRIE_RELIABILITY_FIGURES``
names a file, appended to it as JSON lines; docs/reliability.md publishes the figures.
Kill moments come from a seeded random generator: the seed is in every failure message
and can be fixed with ``COWRIE_RELIABILITY_SEED``.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import random
import resource
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from cowrieprocessor.backfill import BACKFILL_JOB, CLEAR_JOB, BackfillKnobs, KnobError
from cowrieprocessor.backfill.progress import PROGRESS_TABLE
from cowrieprocessor.db import adoption
from cowrieprocessor.db.engine import create_engine_from_url
from cowrieprocessor.settings import PROJECT_ROOT
from tests.conftest import DIALECTS
from tests.helpers import ALEMBIC_BIN, record, run_alembic
from tests.seed import T0, asn_t, at_0002, ev_t, ip_t, migrate, seed_random, sess_t, snapshots

BEFORE = "0002_snapshot_columns"
BACKFILL = "0003_backfill_session_snapshots"
HEAD = "0004_snapshot_indexes"
SNAPSHOT_INDEXES = frozenset(adoption.SNAPSHOT_INDEXES)
NULLS = (None,) * 5
RUN_TIMEOUT = 300.0
SEED = int(os.environ.get("COWRIE_RELIABILITY_SEED") or random.SystemRandom().randrange(10**9))
PASSWORD = "p@ss:w/rd?#%&= x'\"1"  # every character a URL parser cares about

Snaps = dict[str, tuple[Any, ...]]


# --- data ----------------------------------------------------------------------------


def bulk_seed(conn: sa.Connection, sessions: int, ips: int, seed: int = 11) -> None:
    """The mix of :func:`tests.seed.seed_random` (metadata IPs, padded and upper-case ones,
    raw-event-only sessions, unmatched IPs, IPv6), inserted in bulk: tens of thousands of
    rows in a second or two instead of one round trip per row."""
    rng = random.Random(seed)
    asns = (4134, 4837, 14061, 16509)
    conn.execute(
        sa.insert(asn_t),
        [
            dict(
                asn_number=a,
                organization_name="AS",
                organization_country="CN",
                first_seen=T0,
                last_seen=T0,
            )
            for a in asns
        ],
    )
    inventory = [
        f"10.{n // 65536}.{(n // 256) % 256}.{n % 256}" if n % 10 else f"2001:db8::{n:x}"
        for n in range(ips)
    ]
    countries = ["CN", "US", "RU", "BR", "XX", "de", None]
    ip_rows = []
    for ip in inventory:
        country = rng.choice(countries)
        ip_rows.append(
            dict(
                ip_address=ip,
                current_asn=rng.choice([*asns, None]),
                first_seen=T0,
                last_seen=T0,
                enrichment={} if country is None else {"maxmind": {"country": country}},
                enrichment_updated_at=T0 + timedelta(days=rng.randrange(300)),
                ip_types=rng.choice([["VPN", "DATACENTER"], ["RESIDENTIAL"], []]),
            )
        )
    conn.execute(sa.insert(ip_t), ip_rows)
    session_rows: list[dict[str, Any]] = []
    event_rows: list[dict[str, Any]] = []
    for n in range(sessions):
        sid = f"{rng.getrandbits(48):012x}"
        roll = rng.random()
        ip = rng.choice(inventory) if roll > 0.02 else f"192.0.2.{n % 250}"
        if roll < 0.9:
            meta = f" {ip.upper()} " if n % 7 == 0 else ip
            enrichment: Any = {"session_metadata": {"source_ip": meta}}
        else:  # known only from raw events: the earliest one carries the canonical IP
            enrichment = {"session_metadata": {}}
            for offset, event_ip in ((0, ip), (5, "203.0.113.9")):
                event_rows.append(
                    dict(
                        source="/var/log/cowrie/cowrie.json",
                        payload={
                            "eventid": "cowrie.session.connect",
                            "session": sid,
                            "src_ip": event_ip,
                        },
                        session_id=sid,
                        event_type="cowrie.session.connect",
                        event_timestamp=T0 + timedelta(seconds=n + offset),
                    )
                )
        session_rows.append(dict(session_id=sid, first_event_at=T0, enrichment=enrichment))
    for chunk in range(0, len(session_rows), 5000):
        conn.execute(sa.insert(sess_t), session_rows[chunk : chunk + 5000])
    for chunk in range(0, len(event_rows), 5000):
        conn.execute(sa.insert(ev_t), event_rows[chunk : chunk + 5000])


class Databases:
    """Throwaway databases on one dialect: empty ones, and copies of a seeded one."""

    def __init__(self, dialect: str, folder: Path, server_url: str | None = None) -> None:
        self.dialect = dialect
        self.folder = folder
        self.created: list[str] = []
        self.admin = (
            sa.create_engine(server_url, isolation_level="AUTOCOMMIT") if server_url else None
        )

    def new(self) -> str:
        name = f"rel_{uuid.uuid4().hex[:12]}"
        return self._create(name, f'CREATE DATABASE "{name}"')

    def clone(self, url: str) -> str:
        """A copy of ``url`` (whose engines must all be disposed on PostgreSQL)."""
        name = f"rel_{uuid.uuid4().hex[:12]}"
        if self.admin is None:
            target = self._create(name, None)
            src, dst = sqlite3.connect(_sqlite_path(url)), sqlite3.connect(_sqlite_path(target))
            try:
                src.backup(dst)
            finally:
                src.close()
                dst.close()
            return target
        source = sa.make_url(url).database
        return self._create(name, f'CREATE DATABASE "{name}" TEMPLATE "{source}"')

    def _create(self, name: str, statement: str | None) -> str:
        if self.admin is None:
            url = f"sqlite:///{self.folder / (name + '.sqlite')}"
        else:
            with self.admin.connect() as conn:
                conn.execute(sa.text(statement or ""))
            url = self.admin.url.set(database=name).render_as_string(hide_password=False)
        self.created.append(url)
        return url

    def close(self) -> None:
        if self.admin is None:
            return
        with self.admin.connect() as conn:
            for url in self.created:
                name = sa.make_url(url).database
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.admin.dispose()


def _sqlite_path(url: str) -> str:
    return str(sa.make_url(url).database)


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
) -> Dataset:
    """Seed a template, then run it uninterrupted (upgrade, then downgrade) on a copy.

    With ``observe``, both go through the ``alembic`` command, timed and with their
    batches counted: the kill trials draw their random moments from those.
    """
    template = dbs.new()
    engine = at_0002(template)
    with engine.begin() as conn:
        seeder(conn)
    with engine.connect() as conn:
        sessions = int(conn.execute(sa.text("SELECT count(*) FROM session_summaries")).scalar_one())
    engine.dispose()
    ds = Dataset(dbs, template, sessions, dict(knobs), {})
    url = ds.clone()
    engine = create_engine_from_url(url)
    if observe:
        ds.up = observed_run(url, ["upgrade", "head"], knobs, BACKFILL_JOB)
    else:
        migrate(url, "head")
    ds.reference = snapshots(engine)
    matched = sum(1 for snap in ds.reference.values() if snap[0] is not None)
    assert matched > 0.8 * sessions, "the reference run matched too few sessions"
    if observe:
        ds.down = observed_run(url, ["downgrade", BEFORE], knobs, CLEAR_JOB)
        assert all(snap == NULLS for snap in snapshots(engine).values())
        ds.rerun = url
    engine.dispose()
    return ds


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("reliability")


def _databases(request: pytest.FixtureRequest, dialect: str, folder: Path) -> Databases:
    server = request.getfixturevalue("pg_server_url") if dialect == "postgresql" else None
    return Databases(dialect, folder, server)


@pytest.fixture(scope="module", params=DIALECTS)
def mixed(request: pytest.FixtureRequest, scratch: Path) -> Iterator[Dataset]:
    """3,000 sessions of the usual mix in batches of 50: 122 batches in under a second."""
    dbs = _databases(request, request.param, scratch)
    try:
        yield build_dataset(
            dbs,
            lambda conn: bulk_seed(conn, 3000, 300),
            {"batch_size": "50"},
            observe=True,
        )
    finally:
        dbs.close()


@pytest.fixture(scope="module", params=DIALECTS)
def large(request: pytest.FixtureRequest, scratch: Path) -> Iterator[Dataset]:
    """30,000 sessions, batches of 250, no pause: an upgrade of several seconds."""
    dbs = _databases(request, request.param, scratch)
    try:
        yield build_dataset(
            dbs, lambda conn: bulk_seed(conn, 30_000, 3000), {"batch_size": "250"}, observe=True
        )
    finally:
        dbs.close()


@pytest.fixture(scope="module")
def pg_small(pg_server_url: str, scratch: Path) -> Iterator[Dataset]:
    """400 sessions on PostgreSQL (tests.seed.seed_random), for the slow-trigger faults."""
    dbs = Databases("postgresql", scratch, pg_server_url)
    try:
        yield build_dataset(dbs, lambda conn: seed_random(conn, 400, 60), {}, observe=False)
    finally:
        dbs.close()


@pytest.fixture(scope="module")
def sqlite_small(scratch: Path) -> Iterator[Dataset]:
    """3,000 sessions on SQLite, for the lock, disk and permission faults."""
    dbs = Databases("sqlite", scratch)
    yield build_dataset(dbs, lambda conn: bulk_seed(conn, 3000, 300), {}, observe=False)


# --- the alembic command, observed -----------------------------------------------------


class Alembic:
    """``alembic -x db=URL ...`` as a child process, its stderr read line by line as it comes."""

    def __init__(
        self,
        url: str,
        *args: str,
        x: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        x_opts = ["-x", f"db={url}"]
        for key, value in (x or {}).items():
            x_opts += ["-x", f"{key}={value}"]
        full_env = {k: v for k, v in os.environ.items() if k != "COWRIE_DB_URL"}
        full_env.update(env or {})
        self.lines: list[tuple[float, str]] = []
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [str(ALEMBIC_BIN), "-c", str(PROJECT_ROOT / "alembic.ini"), *x_opts, *args],
            cwd=PROJECT_ROOT,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=preexec_fn,  # resource limits and capabilities of the child only
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float = RUN_TIMEOUT) -> int:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"alembic still running after {timeout} s:\n{self.output}"
            ) from None
        self._reader.join(timeout=30)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return rc

    def kill(self) -> None:
        """``kill -9`` (our own child, by its pid)."""
        self.proc.send_signal(signal.SIGKILL)
        self.wait(30)

    @property
    def output(self) -> str:
        return "\n".join(line for _t, line in self.lines)

    def times_of(self, text: str) -> list[float]:
        return [t for t, line in self.lines if text in line]


def progress_state(engine: sa.Engine, job: str) -> tuple[str, str | None, int]:
    """(phase or 'no-row' or 'no-table', last_key, batches) of ``job``."""
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table(PROGRESS_TABLE):
                return "no-table", None, 0
            row = conn.execute(
                sa.text(f"SELECT phase, last_key, batches FROM {PROGRESS_TABLE} WHERE job = :j"),
                {"j": job},
            ).first()
    except DBAPIError:  # the table went away between the two statements
        return "no-table", None, 0
    if row is None:
        return "no-row", None, 0
    return str(row[0]), row[1], int(row[2])


def version(engine: sa.Engine) -> str:
    with engine.connect() as conn:
        return str(conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar())


def observed_run(url: str, args: list[str], knobs: Mapping[str, str], job: str) -> Reference:
    """Run to the end, counting the batches of ``job`` and timing when they ran."""
    engine = create_engine_from_url(url)
    run = Alembic(url, *args, x=knobs)
    batches, seen = 0, []
    while run.running():
        at = time.monotonic() - run.started
        phase, _key, done = progress_state(engine, job)
        if phase in ("walk", "catchup"):
            seen.append(at)
        batches = max(batches, done)
        time.sleep(0.01)
    rc = run.wait()
    engine.dispose()
    assert rc == 0, run.output
    assert seen, f"no batch of {job} was ever seen running:\n{run.output}"
    return Reference(batches, seen[0], seen[-1])


def landing(engine: sa.Engine, direction: str) -> str:
    """Where in the command a kill landed, from what the database says afterwards."""
    at = version(engine)
    if direction == "upgrade":
        phase = progress_state(engine, BACKFILL_JOB)[0]
        if at == BEFORE:
            return {
                "walk": "upgrade: backfill walk",
                "catchup": "upgrade: catch-up pass",
                "done": "upgrade: backfill done, 0003 not stamped",
            }.get(phase, "upgrade: start-up, before the first batch")
        return "upgrade: 0004 (indexes)" if at == BACKFILL else "upgrade: head stamped"
    phase = progress_state(engine, CLEAR_JOB)[0]
    if at == HEAD:
        return "downgrade: start-up or dropping the indexes (0004)"
    if at == BACKFILL:
        return {
            "walk": "downgrade: clearing batches",
            "done": "downgrade: clear done, 0002 not stamped",
            "no-table": "downgrade: clear done, 0002 not stamped",
        }.get(phase, "downgrade: before the first clear batch")
    return "downgrade: 0002 stamped"


def run_with_kills(
    url: str,
    args: list[str],
    knobs: Mapping[str, str],
    ref: Reference,
    job: str,
    rng: random.Random,
    kills: int,
) -> list[str]:
    """Start the command and ``kill -9`` it, up to ``kills`` times, then rerun it until it
    finishes by itself. Returns where each kill landed.

    Each kill is aimed at random, one way or the other with equal odds: at a moment after
    the run's first batch commits, drawn from the span in which the uninterrupted run had
    batches running (stretched by a tenth, so that some fall on the DDL or the stamping
    after them); or just after a random batch still to come commits, then 0-30 ms later,
    inside the next one. Both are measured from the run's own progress, so a slow start
    (a busy machine) does not move them.
    """
    engine = create_engine_from_url(url)
    direction = args[0]
    landed: list[str] = []
    try:
        while True:
            done = progress_state(engine, job)[2]
            run = Alembic(url, *args, x=knobs)
            if len(landed) < kills:
                if rng.random() < 0.5 or done + 1 >= ref.batches:
                    batch, delay = done + 1, rng.uniform(0.0, 1.1 * (ref.last - ref.first))
                else:
                    batch, delay = rng.randint(done + 1, ref.batches), rng.uniform(0.0, 0.03)
                if _wait_until(run, engine, job, batch, delay):
                    run.kill()
                    landed.append(landing(engine, direction))
                    continue
            rc = run.wait()
            assert rc == 0, f"seed {SEED}: rerun after kills at {landed} failed:\n{run.output}"
            return landed
    finally:
        engine.dispose()


def _wait_until(run: Alembic, engine: sa.Engine, job: str, batch: int, delay: float) -> bool:
    """Wait for ``batch`` batches of ``job`` to be committed, then ``delay`` seconds more;
    False when the command finished first."""
    while run.running() and progress_state(engine, job)[2] < batch:
        time.sleep(0.005)
    try:
        run.proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        return True
    return False


def differences(got: Snaps, want: Snaps) -> list[str]:
    return sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))


def snapshot_indexes(engine: sa.Engine) -> set[str]:
    names = {str(ix["name"]) for ix in sa.inspect(engine).get_indexes("session_summaries")}
    return names & SNAPSHOT_INDEXES


def invalid_indexes(engine: sa.Engine) -> int:
    if engine.dialect.name != "postgresql":
        return 0
    with engine.connect() as conn:
        return int(
            conn.execute(sa.text("SELECT count(*) FROM pg_index WHERE NOT indisvalid")).scalar_one()
        )


def assert_only_whole_ranges_committed(engine: sa.Engine, reference: Snaps) -> int:
    """Nothing half-written: keys up to the saved position hold the reference values,
    keys after it hold none. Returns how many rows were committed."""
    phase, last_key, _batches = progress_state(engine, BACKFILL_JOB)
    assert phase == "walk", f"expected a walk stopped part way, found {phase!r}"
    got = snapshots(engine)
    for key, snap in got.items():
        if last_key is not None and key <= last_key:
            assert snap == reference[key], key
        else:
            assert snap == NULLS, key
    return sum(1 for key in got if last_key is not None and key <= last_key)


# --- kill -9 at random moments ---------------------------------------------------------


def kill_trial(ds: Dataset, url: str, rng: random.Random, max_kills: int, name: str) -> list[str]:
    """The upgrade killed at random moments and rerun to the end, compared with the
    uninterrupted run; then the same for the downgrade, which brings the database back
    to where the next trial starts. Returns where the kills landed."""
    engine = create_engine_from_url(url)
    kills_up, kills_down = rng.randint(1, max_kills), rng.randint(1, max_kills)
    up = run_with_kills(url, ["upgrade", "head"], ds.knobs, ds.up, BACKFILL_JOB, rng, kills_up)
    diff = differences(snapshots(engine), ds.reference)
    assert not diff, f"{name} kills {up}: {len(diff)} rows differ, e.g. {diff[:5]}"
    assert version(engine) == HEAD
    assert snapshot_indexes(engine) == SNAPSHOT_INDEXES
    assert invalid_indexes(engine) == 0, f"{name}: an INVALID index is left"
    down = run_with_kills(url, ["downgrade", BEFORE], ds.knobs, ds.down, CLEAR_JOB, rng, kills_down)
    diff = differences(snapshots(engine), dict.fromkeys(ds.reference, NULLS))
    assert not diff, f"{name} kills {down}: {len(diff)} rows not cleared, e.g. {diff[:5]}"
    assert version(engine) == BEFORE
    assert not snapshot_indexes(engine)
    assert not sa.inspect(engine).has_table(PROGRESS_TABLE)
    engine.dispose()
    return up + down


def kill_trials(ds: Dataset, trials: int, max_kills: int, test: str) -> None:
    """``trials`` kill trials in three lanes side by side (three databases): most of a
    trial is spent starting Python. Each lane has its own seeded random generator."""
    lanes = [ds.rerun, ds.clone(), ds.clone()]

    def lane(n: int) -> list[str]:
        rng = random.Random(f"{SEED}-{ds.dialect}-{test}-{n}")
        landed: list[str] = []
        for trial in range(n, trials, len(lanes)):
            landed += kill_trial(ds, lanes[n], rng, max_kills, f"seed {SEED} trial {trial}")
        return landed

    with ThreadPoolExecutor(len(lanes)) as pool:
        landed = [where for done in pool.map(lane, range(len(lanes))) for where in done]
    rows = 2 * trials * len(ds.reference)  # after each upgrade and each downgrade
    record(
        test,
        dialect=ds.dialect,
        seed=SEED,
        sessions=ds.sessions,
        knobs=ds.knobs,
        trials=trials,
        kills=len(landed),
        kills_landed=dict(sorted(Counter(landed).items())),
        rows_compared=rows,
        columns_compared=rows * 5,
        differences=0,
        batches_per_upgrade=ds.up.batches,
        upgrade_batches_ran_s=[round(ds.up.first, 2), round(ds.up.last, 2)],
        downgrade_batches_ran_s=[round(ds.down.first, 2), round(ds.down.last, 2)],
    )


def test_kill_9_at_random_moments_then_rerun_matches_an_uninterrupted_run(mixed: Dataset) -> None:
    kill_trials(mixed, trials=3, max_kills=1, test="kill-9 (default suite)")


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_kill_9_trials_at_scale(large: Dataset) -> None:
    kill_trials(large, trials=10, max_kills=3, test="kill-9 (slow)")


def test_upgrade_after_an_interrupted_downgrade_restores_every_snapshot(
    sqlite_small: Dataset,
) -> None:
    url = sqlite_small.clone()
    migrate(url, "head")
    engine = create_engine_from_url(url)
    run = Alembic(url, "downgrade", BEFORE, x={"batch_size": "100", "pause_ms": "20"})
    assert _wait_until(run, engine, CLEAR_JOB, 5, 0.0)
    run.kill()
    assert version(engine) == BACKFILL  # the clear stopped half way: 0003 stays applied
    out = run_alembic(url, "upgrade", "head")
    assert out.returncode == 0, out.stderr
    assert "an interrupted downgrade left snapshot columns partly cleared" in out.stderr
    lost = differences(snapshots(engine), sqlite_small.reference)
    engine.dispose()
    assert not lost, f"{len(lost)} sessions at head without their snapshots"


# --- PostgreSQL: the backend dies mid-statement, a row lock, a statement timeout ---------


def _slow_updates(engine: sa.Engine, seconds_per_row: float) -> None:
    """A trigger that makes every row the backfill writes cost ``seconds_per_row``."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS "
                f"$$ BEGIN PERFORM pg_sleep({float(seconds_per_row)}); RETURN NEW; END $$"
            )
        )
        conn.execute(
            sa.text(
                "CREATE TRIGGER slow BEFORE UPDATE ON session_summaries "
                "FOR EACH ROW EXECUTE FUNCTION slow()"
            )
        )


@pytest.mark.postgres
def test_backend_terminated_while_its_batch_statement_runs_is_retried(pg_small: Dataset) -> None:
    url = pg_small.clone()
    engine = create_engine_from_url(url)
    _slow_updates(engine, 0.003)  # a batch of 100 rows: 0.3 s inside its UPDATE
    run = Alembic(url, "upgrade", "head", x={"batch_size": "100"})
    killed: list[tuple[int, float]] = []
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        while run.running() and len(killed) < 2:
            row = conn.execute(
                sa.text(
                    "SELECT pid, extract(epoch FROM clock_timestamp() - query_start) "
                    "FROM pg_stat_activity WHERE application_name = 'cowrie-backfill' "
                    "AND wait_event = 'PgSleep' "  # in the trigger: inside the batch's UPDATE
                    "AND clock_timestamp() - query_start > interval '50 ms'"
                )
            ).first()
            if row is not None and row[0] not in {pid for pid, _ in killed}:
                assert conn.execute(
                    sa.text("SELECT pg_terminate_backend(:p)"), {"p": row[0]}
                ).scalar()
                killed.append((int(row[0]), float(row[1])))
            time.sleep(0.01)
    rc = run.wait()
    assert rc == 0, run.output
    assert len(killed) == 2, f"only {len(killed)} batch statements were caught running"
    assert len(run.times_of("connection lost, retry")) >= 2, run.output
    got = snapshots(engine)
    assert not differences(got, pg_small.reference)
    assert progress_state(engine, BACKFILL_JOB)[0] == "done"
    engine.dispose()
    record(
        "backend terminated mid-statement",
        dialect="postgresql",
        terminated=len(killed),
        statement_age_at_kill_s=[round(age, 3) for _, age in killed],
        rows_compared=len(got),
        differences=0,
    )


@pytest.mark.postgres
def test_row_lock_released_while_retries_remain_then_the_run_finishes(pg_small: Dataset) -> None:
    url = pg_small.clone()
    engine = create_engine_from_url(url)
    with engine.connect() as conn:
        keys = conn.execute(
            sa.text("SELECT session_id FROM session_summaries ORDER BY 1")
        ).scalars()
        victim = list(keys)[250]
    locker = engine.connect()
    locker.execute(
        sa.text("SELECT 1 FROM session_summaries WHERE session_id = :k FOR UPDATE"), {"k": victim}
    )
    lock_timeout_ms = 300
    run = Alembic(
        url,
        "upgrade",
        "head",
        x={"batch_size": "100", "lock_timeout": f"{lock_timeout_ms}ms", "max_retries": "6"},
    )
    waits: dict[tuple[int, str], float] = {}  # (pid, query_start) -> longest wait seen
    released_at = None
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        while run.running():
            rows = conn.execute(
                sa.text(
                    "SELECT pid, query_start::text, "
                    "extract(epoch FROM clock_timestamp() - query_start) "
                    "FROM pg_stat_activity WHERE application_name = 'cowrie-backfill' "
                    "AND wait_event_type = 'Lock'"
                )
            ).all()
            for pid, started, age in rows:
                waits[(pid, started)] = max(waits.get((pid, started), 0.0), float(age))
            if released_at is None and len(waits) >= 2 and not rows:
                locker.rollback()  # two waits have timed out: let the third attempt through
                released_at = time.monotonic()
            time.sleep(0.01)
    rc = run.wait()
    locker.close()
    assert rc == 0, run.output
    assert released_at is not None, f"the backfill never waited twice on the lock:\n{run.output}"
    assert time.monotonic() - released_at < 30
    assert len(run.times_of("lock timeout, retry")) >= 2, run.output
    longest = max(waits.values())
    assert longest < lock_timeout_ms / 1000 + 0.25, f"a wait of {longest:.3f} s"
    got = snapshots(engine)
    assert not differences(got, pg_small.reference)
    assert got[victim][0] is not None  # the locked row was not skipped
    engine.dispose()
    record(
        "row lock released while retries remain",
        dialect="postgresql",
        lock_timeout_ms=lock_timeout_ms,
        lock_waits=len(waits),
        longest_wait_s=round(longest, 3),
        rows_compared=len(got),
        differences=0,
    )


@pytest.mark.postgres
def test_statement_timeout_from_the_alembic_command_splits_ranges_and_completes(
    pg_small: Dataset,
) -> None:
    url = pg_small.clone()
    engine = create_engine_from_url(url)
    _slow_updates(engine, 0.002)  # 100-row batches need 0.2 s: over 100 ms they time out
    out = run_alembic(url, "upgrade", "head", x={"batch_size": "100", "statement_timeout": "100ms"})
    assert out.returncode == 0, out.stderr
    assert "hit statement_timeout (100 ms): splitting it in two" in out.stderr
    splits = int(out.stderr.split("ranges split: ")[1].split()[0])
    assert splits >= 2
    got = snapshots(engine)
    assert not differences(got, pg_small.reference)
    engine.dispose()
    record(
        "statement_timeout via -x",
        dialect="postgresql",
        statement_timeout_ms=100,
        splits=splits,
        rows_compared=len(got),
        differences=0,
    )


# --- concurrent ingestion ---------------------------------------------------------------


@dataclass
class Writer:
    """The loader: inserts a new session with its connect event and bumps the counters of
    an existing one, in one transaction, every ``interval`` seconds."""

    url: str
    existing: list[str]
    inventory: list[str]
    interval: float
    rng: random.Random
    latencies: list[tuple[float, float]] = field(default_factory=list)  # started, seconds
    errors: list[str] = field(default_factory=list)
    new: list[tuple[str, str, bool, float]] = field(default_factory=list)  # id, ip, match, at
    bumps: Counter[str] = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        engine = create_engine_from_url(self.url, application_name="cowrie-loader")
        taken = set(self.existing)
        try:
            while not self.stop.is_set():
                started = time.monotonic()
                sid = f"{self.rng.getrandbits(48):012x}"
                if sid in taken:
                    continue
                taken.add(sid)
                matchable = self.rng.random() < 0.8
                ip = (
                    self.rng.choice(self.inventory)
                    if matchable
                    else f"198.51.100.{self.rng.randrange(256)}"
                )
                bump = self.rng.choice(self.existing)
                try:
                    self._write(engine, sid, ip, bump)
                except Exception as exc:  # the writer must never fail: collect and go on
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                else:
                    done = time.monotonic()
                    self.latencies.append((started, done - started))
                    self.new.append((sid, ip, matchable, done))
                    self.bumps[bump] += 1
                self.stop.wait(max(0.0, self.interval - (time.monotonic() - started)))
        finally:
            engine.dispose()

    @staticmethod
    def _write(engine: sa.Engine, sid: str, ip: str, bump: str) -> None:
        with engine.connect() as conn:
            if conn.dialect.name == "sqlite":  # take the write lock up front, as the loader does
                conn = conn.execution_options(sqlite_begin="IMMEDIATE")
            with conn.begin():
                conn.execute(
                    sa.insert(sess_t).values(
                        session_id=sid,
                        first_event_at=T0,
                        enrichment={"session_metadata": {"source_ip": ip}},
                    )
                )
                conn.execute(
                    sa.insert(ev_t).values(
                        source="/var/log/cowrie/cowrie.json",
                        payload={"eventid": "cowrie.session.connect", "src_ip": ip},
                        session_id=sid,
                        event_type="cowrie.session.connect",
                        event_timestamp=T0,
                    )
                )
                conn.execute(
                    sa.update(sess_t)
                    .where(sess_t.c.session_id == bump)
                    .values(
                        event_count=sess_t.c.event_count + 1,
                        command_count=sess_t.c.command_count + 1,
                    )
                )


def ingest_during_backfill(
    ds: Dataset, knobs: Mapping[str, str], interval: float, test: str
) -> dict[str, Any]:
    url = ds.clone()
    engine = create_engine_from_url(url)
    with engine.connect() as conn:
        inventory = list(conn.execute(sa.text("SELECT ip_address FROM ip_inventory")).scalars())
    writer = Writer(url, sorted(ds.reference), inventory, interval, random.Random(SEED))
    thread = threading.Thread(target=writer.run)
    thread.start()
    time.sleep(0.2)
    run = Alembic(url, "upgrade", "head", x=knobs)
    walk_seen_until = 0.0  # the last moment at which the walk was seen still running
    batches_from = batches_to = 0.0  # from just before the first batch, to after the last
    phases: set[str] = set()
    while run.running():
        asked = time.monotonic()
        phase = progress_state(engine, BACKFILL_JOB)[0]
        if phase in ("no-table", "no-row", "walk"):
            walk_seen_until = asked
        if phase == "no-table":
            batches_from = asked
        if "done" not in phases:
            batches_to = time.monotonic()
        phases.add(phase)
        time.sleep(0.02)
    rc = run.wait()
    ended = time.monotonic()
    time.sleep(0.3)
    writer.stop.set()
    thread.join(timeout=60)
    assert rc == 0, run.output
    assert not writer.errors, writer.errors[:5]
    assert "walk" in phases, "the backfill was never seen walking"

    got = snapshots(engine)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(sess_t.c.session_id, sess_t.c.event_count)).all()
    counters = {str(sid): int(count) for sid, count in rows}
    engine.dispose()
    # the counters of existing sessions: every increment kept
    assert {sid: counters[sid] for sid in writer.bumps} == dict(writer.bumps)
    # the existing sessions: exactly what an undisturbed run gives them
    assert not differences({k: got[k] for k in ds.reference}, ds.reference)
    before_catchup = [n for n in writer.new if n[3] < walk_seen_until]
    for sid, ip, matchable, _at in before_catchup:
        if matchable:
            assert got[sid][0] == ip, f"new session {sid} ({ip}) was not caught up"
    for sid, _ip, matchable, _at in writer.new:
        if not matchable:
            assert got[sid] == NULLS, sid
    during = [n for n in writer.new if walk_seen_until <= n[3] < ended and n[2]]
    filled_during = sum(1 for sid, *_ in during if got[sid][0] is not None)
    # the writer's waits while the batches ran, and while the rest of the command ran
    # (on SQLite 0004 builds the indexes in one transaction: writers wait for all of it)
    lat = sorted(t for at, t in writer.latencies if batches_from <= at <= batches_to)
    rest = [t for at, t in writer.latencies if run.started <= at <= ended]
    assert lat, "no write ran while the batches ran"
    figures = {
        "dialect": ds.dialect,
        "sessions": ds.sessions,
        "knobs": dict(knobs),
        "writer_transactions": len(writer.latencies),
        "writer_errors": len(writer.errors),
        "deadlocks": sum("deadlock" in e for e in writer.errors),
        "during_batches": len(lat),
        "p50_ms": round(1000 * statistics.median(lat), 1),
        "p99_ms": round(1000 * lat[max(0, int(0.99 * len(lat)) - 1)], 1),
        "max_ms": round(1000 * lat[-1], 1),
        "max_ms_whole_command": round(1000 * max(rest), 1),
        "new_matchable_before_catchup": sum(1 for n in before_catchup if n[2]),
        "new_matchable_during_catchup_or_0004": len(during),
        "of_which_filled": filled_during,
        "new_matchable_after_the_run": sum(1 for n in writer.new if n[3] >= ended and n[2]),
        "backfill_retries": int(run.output.split("retries: ")[1].split(",")[0]),
    }
    record(test, **figures)
    return figures


def test_concurrent_writer_sees_no_error_and_waits_under_a_second(mixed: Dataset) -> None:
    figures = ingest_during_backfill(
        mixed, {"batch_size": "200", "pause_ms": "10"}, 0.005, "concurrent ingestion"
    )
    assert figures["max_ms"] < 1000


@pytest.mark.slow
def test_concurrent_writer_at_the_default_batch_size(large: Dataset) -> None:
    """The figures for the default knobs, reported; and under a second with knobs for a
    busy database (fixed batches of 1000, a pause that lets SQLite's writers in: its busy
    handler is not a queue, and back-to-back batches can starve them)."""
    ingest_during_backfill(large, {}, 0.01, "concurrent ingestion (defaults)")
    busy = {"batch_size": "1000", "pause_ms": "10"}
    small = ingest_during_backfill(large, busy, 0.01, "concurrent ingestion (busy knobs)")
    assert small["max_ms"] < 1000


# --- SQLite: a lock held by another process, a full disk, a read-only file -------------

HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
"""


class LockHolder:
    """Another process that holds SQLite's write lock until told to let go."""

    def __init__(self, url: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, _sqlite_path(url)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "locked"
        self.since = time.monotonic()

    def release(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write("\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
            assert self.proc.stdout is not None
            self.proc.stdout.close()


def _after_batches(engine: sa.Engine, run: Alembic, batches: int) -> None:
    deadline = time.monotonic() + 60
    while progress_state(engine, BACKFILL_JOB)[2] < batches:
        assert run.running() and time.monotonic() < deadline, run.output
        time.sleep(0.01)


def test_sqlite_locked_by_another_process_stops_with_the_range_named(sqlite_small: Dataset) -> None:
    url = sqlite_small.clone()
    engine = create_engine_from_url(url)
    knobs = {"batch_size": "200", "pause_ms": "30", "lock_timeout": "100ms", "max_retries": "2"}
    run = Alembic(url, "upgrade", "head", x=knobs)
    _after_batches(engine, run, 3)
    holder = LockHolder(url)
    try:
        rc = run.wait(60)
        held_for = time.monotonic() - holder.since
        assert rc != 0
        out = run.output
        assert "failed after 3 attempt(s): database is locked" in out
        assert "snapshot_backfill walk batch" in out and "session_id range (" in out
        # 3 waits of 100 ms and 2 backoffs of at most 0.2 + 0.4 s, plus the batch in flight
        # and the process's exit: bounded, never a hang
        assert held_for < 3 * 0.1 + 0.6 + 2.0, f"gave up only after {held_for:.1f} s"
        assert version(engine) == BEFORE
        committed = assert_only_whole_ranges_committed(engine, sqlite_small.reference)
    finally:
        holder.release()
    again = run_alembic(url, "upgrade", "head")
    assert again.returncode == 0, again.stderr
    assert "resuming walk" in again.stderr
    assert not differences(snapshots(engine), sqlite_small.reference)
    engine.dispose()
    record(
        "sqlite locked by another process (gives up)",
        dialect="sqlite",
        gave_up_after_s=round(held_for, 2),
        rows_committed_before=committed,
        differences=0,
    )


def test_sqlite_disk_full_stops_cleanly_and_a_rerun_completes(sqlite_small: Dataset) -> None:
    url = sqlite_small.clone()
    engine = create_engine_from_url(url)
    engine.dispose()  # its last connection checkpoints and removes the WAL
    size = Path(_sqlite_path(url)).stat().st_size

    def full_disk() -> None:  # no file may grow past the database's size plus 256 KiB
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 262144, size + 262144))

    run = Alembic(url, "upgrade", "head", x={"batch_size": "100"}, preexec_fn=full_disk)
    rc = run.wait()
    out = run.output
    assert rc != 0
    assert "disk I/O error" in out or "database or disk is full" in out, out
    assert "session_id range (" in out
    with sqlite3.connect(_sqlite_path(url)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()
    assert version(engine) == BEFORE
    committed = assert_only_whole_ranges_committed(engine, sqlite_small.reference)
    assert 0 < committed < sqlite_small.sessions
    again = run_alembic(url, "upgrade", "head")
    assert again.returncode == 0, again.stderr
    assert not differences(snapshots(engine), sqlite_small.reference)
    engine.dispose()
    record("sqlite disk full", dialect="sqlite", rows_committed_before=committed, differences=0)


CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER = 1, 2, 3
PR_CAPBSET_DROP = 24


def _as_ordinary_user() -> None:
    """Root ignores file modes: drop the capabilities that let it (in the child only)."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.mark.parametrize("what", ["file", "folder"])
def test_sqlite_read_only_database_fails_clearly_and_writes_nothing(
    sqlite_small: Dataset, what: str
) -> None:
    url = sqlite_small.clone()
    path = Path(_sqlite_path(url))
    folder = path.parent / f"ro-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    path = path.rename(folder / path.name)
    url = f"sqlite:///{path}"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    (path if what == "file" else folder).chmod(0o444 if what == "file" else 0o555)
    try:
        run = Alembic(url, "upgrade", "head", preexec_fn=_as_ordinary_user)
    except subprocess.SubprocessError as exc:
        pytest.skip(f"cannot drop root's file-permission override here: {exc}")
    try:
        rc = run.wait()
    finally:
        folder.chmod(0o755)
        path.chmod(0o644)
    assert rc != 0
    assert "attempt to write a readonly database" in run.output
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    engine = create_engine_from_url(url)
    assert version(engine) == BEFORE
    assert all(snap == NULLS for snap in snapshots(engine).values())
    engine.dispose()


def test_a_read_only_uri_opens_without_creating_folders(
    sqlite_small: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///file:{_sqlite_path(sqlite_small.template)}?mode=ro&uri=true"
    engine = create_engine_from_url(url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM session_summaries")).scalar()
    engine.dispose()
    assert list(tmp_path.iterdir()) == []


# --- security: passwords and knob values -------------------------------------------------


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


HOSTILE = [
    "1; DROP TABLE session_summaries",
    "0) OR (1=1",
    "10'--",
    "$(touch /tmp/x)",
    "1e9",
    "-1",
    "0x10",
    "10 ms; SELECT pg_sleep(10)",
    "NaN",
    "\u0000",
    "",
]


@pytest.mark.parametrize("value", HOSTILE, ids=[f"v{n}" for n in range(len(HOSTILE))])
@pytest.mark.parametrize("knob", ["batch_size", "lock_timeout", "statement_timeout", "pause_ms"])
def test_hostile_knob_values_are_refused_by_name(knob: str, value: str) -> None:
    for source in ({knob: value}, None):
        env = {} if source else {f"COWRIE_BACKFILL_{knob.upper()}": value}
        with pytest.raises(KnobError, match=knob):
            BackfillKnobs.from_sources(source, env)


def test_an_absurdly_long_number_is_refused_by_name() -> None:
    with pytest.raises(KnobError, match="batch_size"):
        BackfillKnobs.from_sources({"batch_size": "9" * 5000}, {})
