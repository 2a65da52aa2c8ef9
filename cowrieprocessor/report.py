"""Read-only reports behind ``cowrie-db check``, ``status`` and ``verify``.

Each function takes a connection, reads, and returns a plain dataclass; the CLI
decides how to print it (text or ``--json``). Nothing here writes to the database.
The statements are in :mod:`cowrieprocessor.backfill.sql.reports` (used as ``sql.X``), and
"has a snapshot" is its definition (``sql.HAS_SOURCE_IP``, ``sql.HAS_SNAPSHOT``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any

from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection

from cowrieprocessor import __version__, migrate
from cowrieprocessor.backfill import control, progress, sql
from cowrieprocessor.backfill.jobs import JOB_PHASES
from cowrieprocessor.backfill.knobs import BackfillKnobs
from cowrieprocessor.backfill.progress import Progress
from cowrieprocessor.backfill.ranges import dry_run_counts, session_counts
from cowrieprocessor.db import adoption, partitions
from cowrieprocessor.errors import IncompatibleSchema

MIN_VERSIONS = {"postgresql": (13,), "sqlite": (3, 35)}
STALLED_AFTER_S = 120.0


@dataclass
class SchemaState:
    current: list[str]
    head: str
    pending: list[str]
    tables_present: list[str]
    snapshot_columns_present: bool
    adoptable: bool
    advice: str
    assessment: adoption.Assessment | None = None


class UnknownRevision(IncompatibleSchema):
    """The database was migrated by a newer release than this one; nothing was changed."""


def current_revisions(conn: Connection) -> list[str]:
    """The database's revisions (alembic_version), each one this package knows; raises
    :class:`UnknownRevision` for one it does not (a newer release migrated it), before
    any command reads a schema whose shape it cannot know, or writes to it."""
    current = list(MigrationContext.configure(conn).get_current_heads())
    conn.rollback()
    script = migrate.script_directory()
    # Whole ids only: get_revision() would also accept a unique prefix of one.
    known = [rev.revision for rev in script.walk_revisions()]
    for rev in current:
        if rev not in known:
            raise UnknownRevision(
                f"database is at revision {rev}, which this cowrieprocessor (version "
                f"{__version__}, revisions up to {script.get_current_head()}) does not know; "
                "it was migrated by a newer release - use that release's cowrie-db"
            )
    return current


def schema_state(conn: Connection) -> SchemaState:
    script = migrate.script_directory()
    head = script.get_current_head() or ""
    current = current_revisions(conn)
    found = adoption.assess(conn)
    conn.rollback()
    has_columns = "session_summaries" in found.tables and not found.missing_snapshot_columns
    has_columns = has_columns and set(found.snapshot_columns) == set(adoption.SNAPSHOT_COLUMN_KINDS)
    base = current[0] if current else None
    pending = [rev.revision for rev in reversed(list(script.iterate_revisions(head, base)))]
    if found.problems:
        adoptable = False
        advice = "not adoptable: " + "; ".join(found.problems)
        if "ip_inventory" not in found.tables and found.dialect == "sqlite":
            advice += " (a SQLite database of cowrieprocessor's schema code has no IP inventory)"
    elif current:
        adoptable, advice = True, "" if not pending else "run: alembic upgrade head"
    elif found.empty:
        adoptable, advice = True, "empty database: run `alembic upgrade head`"
    else:
        adoptable = True
        advice = (
            f"database {found.origin}, not yet under Alembic: `alembic upgrade head` "
            "adopts it (no stamp needed; docs/runbook.md: Adopting an existing database)"
        )
    return SchemaState(current, head, pending, found.tables, has_columns, adoptable, advice, found)


def server_version(conn: Connection) -> tuple[str, tuple[int, ...]]:
    dialect = conn.dialect.name
    if dialect == "postgresql":
        text = str(conn.execute(sql.PG_SERVER_VERSION).scalar())
    else:
        text = str(conn.execute(sql.SQLITE_SERVER_VERSION).scalar())
    conn.rollback()
    numbers = tuple(int(p) for p in text.split()[0].split(".") if p.isdigit())
    return text, numbers


@dataclass
class Coverage:
    sessions: int
    needing_snapshots: int
    with_snapshot: int
    would_update: int
    reachable: int
    unmatched_no_ip: int
    unmatched_not_in_inventory: int
    inventory_size: int
    # among the sessions needing snapshots: how many each IP source resolves
    resolved_by_source: dict[str, int] = field(default_factory=dict)


def coverage(conn: Connection) -> Coverage:
    """Whole-table counts, using the backfill's own resolution in a dry run (no writes)."""
    total, needing, inventory = session_counts(conn)
    with_snapshot = int(conn.execute(sql.COUNT_WITH_SNAPSHOT).scalar_one())
    counts = dry_run_counts(conn)
    conn.rollback()
    return Coverage(
        sessions=total,
        needing_snapshots=needing,
        with_snapshot=with_snapshot,
        would_update=counts.updated,
        reachable=total - needing + counts.matched,
        unmatched_no_ip=counts.no_ip,
        unmatched_not_in_inventory=counts.not_in_inventory,
        inventory_size=inventory,
        resolved_by_source=dict(zip(sql.IP_SOURCES, counts.by_source, strict=True)),
    )


@dataclass(frozen=True)
class PartitionState:
    """One leaf of a partitioned session_summaries: its sessions (``check``: counted;
    ``status``: the planner's estimate), those lacking a snapshot column (``check``
    only), and where a job stands in it: done, walking or pending in the job's phase."""

    name: str
    sessions: int
    needing_snapshots: int | None = None
    state: str = ""


def partition_counts(conn: Connection) -> list[PartitionState]:
    """``check``: each leaf's sessions and those lacking a snapshot column, counted in
    one scan ([] when session_summaries is not partitioned)."""
    leaves = partitions.leaves(conn)
    if not leaves:
        return []
    counted = {r.leaf: r for r in conn.execute(sql.LEAF_COUNTS).all()}
    conn.rollback()
    found = []
    for leaf in leaves:
        row = counted.get(leaf)
        found.append(
            PartitionState(leaf, int(row.sessions) if row else 0, int(row.needing) if row else 0)
        )
    return found


def leaf_estimates(conn: Connection) -> dict[str, int]:
    """Each leaf's sessions as the planner estimates them, in name order ({} when
    session_summaries is not partitioned)."""
    leaves = partitions.leaves(conn)
    if not leaves:
        return {}
    estimates = {str(k): int(v) for k, v in conn.execute(sql.LEAF_ESTIMATES).all()}
    return {leaf: estimates.get(leaf, 0) for leaf in leaves}


def partition_progress(estimates: dict[str, int], state: progress.JobState) -> list[PartitionState]:
    """``status``: where the job stands in each leaf of :func:`leaf_estimates`. The
    leaves are walked in name order, each phase from the first: the leaves before the
    saved one are done in this phase, the ones after it pending."""
    found = []
    for leaf, sessions in estimates.items():
        if state.phase == progress.DONE:
            where = "done"
        elif state.leaf is None:  # the phase has not reached a partition yet
            where = "pending"
        else:
            where = "done" if leaf < state.leaf else "walking" if leaf == state.leaf else "pending"
        found.append(PartitionState(leaf, sessions, None, where))
    return found


def estimate_seconds(conn: Connection, sessions: int, knobs: BackfillKnobs) -> float | None:
    """Time one dry-run range and scale it to the table (writes cost roughly 2x reads)."""
    if sessions == 0:
        return 0.0
    hi = conn.execute(sql.next_bound(False), {"offset": knobs.batch_size - 1}).scalar()
    started = time.monotonic()
    dry_run_counts(conn, None if hi is None else str(hi))
    elapsed = time.monotonic() - started
    conn.rollback()
    sampled = knobs.batch_size if hi is not None else sessions
    # walk + catch-up pass; a write-batch costs about twice a read-only one
    return elapsed / max(sampled, 1) * sessions * 3


def sessions_with_snapshot_values(conn: Connection) -> int:
    n = int(conn.execute(sql.COUNT_WITH_VALUES).scalar_one())
    conn.rollback()
    return n


@dataclass(frozen=True)
class JobStatus(Progress):
    """A job's progress as its row in the progress table tells it, read from anywhere.

    ``running``: its engine runs now (:func:`control.running_job`); its ``run_state``
    (running, throttled, paused, stopping; stopped or finished once it ended) and what
    holds it back come from the engine's last heartbeat, as do the knobs in force."""

    seconds_since_update: float = 0.0
    stalled: bool = False
    finished_at: str | None = None
    running: bool = False
    seconds_since_heartbeat: float | None = None
    # a partitioned session_summaries: each leaf, and where the job stands in it
    partitions: list[PartitionState] = field(default_factory=list)


def job_status(conn: Connection) -> list[JobStatus]:
    """The progress rows of the backfill and the clear jobs, with rate and ETA."""
    live = control.running_job(conn)
    estimates = leaf_estimates(conn)  # one read for every job's partitions
    result = []
    now = datetime.now(UTC)
    for job, phases in JOB_PHASES.items():
        state = progress.load(conn, job)
        if state is None:
            continue
        stripes = progress.load_workers(conn, job)
        state = progress.with_stripes(state, stripes)
        run = _run_columns(conn, job)
        info: dict[str, Any] = json.loads(run["run_info"]) if run.get("run_info") else {}
        running = live is not None and live.job == job
        done = progress.sessions_done(state)
        elapsed = (state.updated_at - state.started_at).total_seconds()
        found = Progress.of(state, phases, phase=state.phase, done=done, elapsed=elapsed)
        found = replace(
            found,
            workers=[
                progress.worker_view(s, _run_columns(conn, s.job).get("run_state") or "")
                for s in stripes
            ],
        )
        if running and info.get("rate") is not None:  # the engine's own view, waits included
            found = replace(
                found,
                rate=info["rate"],
                eta_seconds=info.get("eta_seconds"),
                wait_share=info.get("wait_share", 0.0),
            )
        since = (now - state.updated_at).total_seconds()
        beat = progress.as_utc(run.get("heartbeat_at"))
        since_beat = (now - beat).total_seconds() if beat is not None else None
        quiet = since if since_beat is None else since_beat
        result.append(
            JobStatus(
                **{
                    **{f.name: getattr(found, f.name) for f in fields(Progress)},
                    "run_state": run.get("run_state") or "",
                    "run_detail": info.get("detail", ""),
                    "knobs": info.get("knobs", {}),
                    "waits": info.get("waits", {}),
                },
                seconds_since_update=round(since, 1),
                stalled=state.phase != progress.DONE and running and quiet > STALLED_AFTER_S,
                finished_at=state.finished_at.isoformat() if state.finished_at else None,
                running=running,
                seconds_since_heartbeat=None if since_beat is None else round(since_beat, 1),
                partitions=partition_progress(estimates, state),
            )
        )
    conn.rollback()
    return result


def _run_columns(conn: Connection, job: str) -> dict[str, Any]:
    """The engine's columns of ``job``'s row ({} in a table of an earlier release)."""
    if progress.lacks_run_columns(conn):
        return {}
    found = conn.execute(sql.RUN_COLUMNS, {"job": job}).mappings().first()
    return dict(found) if found is not None else {}


@dataclass
class Verification:
    coverage_percent: float
    min_coverage: float
    sessions: int
    with_snapshot: int
    matched_missing_snapshot: int
    asn_divergent: int
    country_divergent: int
    index_only_scan: bool | None
    plan: list[str]
    constraints: dict[str, str]
    at_head: bool
    sample: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def verify(conn: Connection, min_coverage: float) -> Verification:
    cov = coverage(conn)
    percent = 100.0 * cov.with_snapshot / cov.sessions if cov.sessions else 100.0
    asn_div = int(conn.execute(sql.ASN_DIVERGENT).scalar_one())
    country_div = int(conn.execute(sql.COUNTRY_DIVERGENT).scalar_one())
    sample = [dict(r._mapping) for r in conn.execute(sql.SNAPSHOT_SAMPLE)]
    for row in sample:
        if row["enrichment_at"] is not None:
            row["enrichment_at"] = str(row["enrichment_at"])
    plan, index_only = query_plan(conn)
    constraints = constraint_state(conn)
    state = schema_state(conn)
    conn.rollback()
    v = Verification(
        coverage_percent=round(percent, 2),
        min_coverage=min_coverage,
        sessions=cov.sessions,
        with_snapshot=cov.with_snapshot,
        matched_missing_snapshot=cov.would_update,
        asn_divergent=asn_div,
        country_divergent=country_div,
        index_only_scan=index_only,
        plan=plan,
        constraints=constraints,
        at_head=not state.pending and bool(state.current),
        sample=sample,
    )
    if percent < min_coverage:
        v.failures.append(f"coverage {percent:.2f}% is below the minimum {min_coverage:g}%")
    if cov.would_update:
        v.failures.append(
            f"{cov.would_update} matched sessions still lack snapshot values (must be 0)"
        )
    if index_only is False:
        v.failures.append("the runbook query is not served by an index-only scan")
    if not v.at_head:
        v.failures.append(f"schema not at head ({state.current or 'unversioned'} -> {state.head})")
    return v


def query_plan(conn: Connection) -> tuple[list[str], bool | None]:
    """The runbook query's plan and whether it is index-only (None: cannot tell)."""
    if conn.dialect.name == "postgresql":
        lines = [str(r) for r in conn.execute(sql.PG_RUNBOOK_PLAN).scalars()]
        conn.rollback()
        return lines, any("Index Only Scan" in line for line in lines)
    rows = conn.execute(sql.SQLITE_RUNBOOK_PLAN).all()
    lines = [str(r[-1]) for r in rows]
    return lines, any("COVERING INDEX" in line for line in lines)


def constraint_state(conn: Connection) -> dict[str, str]:
    if conn.dialect.name == "postgresql":
        rows = conn.execute(sql.PG_CONSTRAINTS).all()
        conn.rollback()
        return {str(name): "valid" if ok else "NOT VALID" for name, ok in rows}
    table_sql = str(conn.execute(sql.SQLITE_TABLE_SQL).scalar() or "")
    names = (
        "fk_session_summaries_source_ip_ip_inventory",
        "ck_session_summaries_snapshot_country_iso2",
    )
    return {name: "enforced" if name in table_sql else "absent" for name in names}
