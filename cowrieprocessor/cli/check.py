"""``cowrie-db check``: the pre-flight. Connectivity, the server's version, the file's
integrity (SQLite), the schema's revision and what ``upgrade head`` will adopt, the
counts the backfill will work through and an estimate of its time."""

from __future__ import annotations

import argparse
from typing import TextIO

import sqlalchemy as sa

from cowrieprocessor import report
from cowrieprocessor.backfill import BackfillKnobs, blocks, deferred_indexes, sql
from cowrieprocessor.backfill.ranges import KEY, join_back_mode
from cowrieprocessor.cli.common import (
    EXIT_OK,
    EXIT_USAGE,
    AddCommand,
    connect,
    fmt_seconds,
    open_engine,
)
from cowrieprocessor.db.integrity import UnusableDatabase, require_usable_sqlite


def register(command: AddCommand) -> None:
    check = command("check", help="pre-flight: connectivity, schema, counts, estimate")
    check.add_argument(
        "--batch-size", type=int, default=None, help="batch size to sample for the time estimate"
    )
    check.set_defaults(func=cmd_check)


def cmd_check(args: argparse.Namespace, out: TextIO) -> int:
    engine = open_engine(args)
    try:
        with connect(engine, args.masked_url) as conn:
            version_text, version = report.server_version(conn)
            dialect = conn.dialect.name
            out.write(f"Database:   {args.masked_url}\n")
            out.write(f"Dialect:    {dialect} {version_text}\n")
            if dialect == "sqlite":
                try:
                    require_usable_sqlite(conn)
                except UnusableDatabase:
                    out.write("Integrity:  FAILED (PRAGMA quick_check; see the error)\n")
                    raise
                out.write("Integrity:  ok (PRAGMA quick_check)\n")
            minimum = report.MIN_VERSIONS.get(dialect, ())
            warnings = []
            if version < minimum:
                need = ".".join(map(str, minimum))
                warnings.append(f"{dialect} {version_text} is older than the supported {need}")
            state = report.schema_state(conn)
            out.write(f"Revision:   {', '.join(state.current) or '(none)'}; head {state.head}\n")
            if state.pending:
                out.write(f"Pending:    {' -> '.join(state.pending)}\n")
            if state.advice:
                out.write(f"Advice:     {state.advice}\n")
            if not state.adoptable:
                out.write(f"ERROR: {state.advice}\n")
                return EXIT_USAGE
            _write_adoption(state, out)
            if state.snapshot_columns_present:
                _write_coverage(conn, args, out)
            elif "session_summaries" in state.tables_present:
                out.write("Snapshot columns: not yet added (revision 0002 is pending)\n")
            if args.verbose:
                for job in report.job_status(conn):
                    out.write(
                        f"Progress:   {job.job} {job.phase} {job.percent}% "
                        f"(updated {job.updated_at})\n"
                    )
            for warning in warnings:
                out.write(f"WARNING: {warning}\n")
    finally:
        engine.dispose()
    return EXIT_OK


def _write_coverage(conn: sa.Connection, args: argparse.Namespace, out: TextIO) -> None:
    """What the backfill has to do: the counts, the estimate, the partitions, the
    join-back (the snapshot columns exist)."""
    cov = report.coverage(conn)
    reach = 100.0 * cov.reachable / cov.sessions if cov.sessions else 100.0
    out.write(f"Sessions:   {cov.sessions:,}\n")
    out.write(f"Needing snapshots:     {cov.needing_snapshots:,}\n")
    out.write(f"IPs in inventory:      {cov.inventory_size:,}\n")
    out.write(f"Backfill would update: {cov.would_update:,}\n")
    out.write(
        f"Reachable coverage:    {cov.reachable:,} ({reach:.2f}%); unmatched: "
        f"no canonical IP {cov.unmatched_no_ip:,}, IP not in inventory "
        f"{cov.unmatched_not_in_inventory:,}\n"
    )
    by_source = ", ".join(f"{k} {v:,}" for k, v in cov.resolved_by_source.items())
    out.write(f"IP resolved from:      {by_source}\n")
    knobs = BackfillKnobs.from_sources({"batch_size": args.batch_size})
    estimate = report.estimate_seconds(conn, cov.sessions, knobs)
    out.write(
        f"Estimated backfill:    {fmt_seconds(estimate)} "
        f"(from a {knobs.batch_size:,}-key dry-run sample)\n"
    )
    leaves = report.partition_counts(conn)
    if leaves:
        out.write(
            f"Partitioned: {len(leaves)} leaf partition(s), walked one after the "
            "other in this order:\n"
        )
        for leaf in leaves:
            out.write(
                f"  {leaf.name}: {leaf.sessions:,} sessions, "
                f"{leaf.needing_snapshots or 0:,} needing snapshots\n"
            )
    if conn.dialect.name == "postgresql":
        mode = join_back_mode(conn, knobs)
        out.write(f"Join-back:  {_describe_join_back(mode, knobs)}\n")
        indexes = deferred_indexes.found(conn)
        out.write(f"Walk order: {_describe_walk_order(conn, mode, knobs, indexes[0])}\n")
        _write_snapshot_indexes(conn, out, indexes, partitioned=bool(leaves))


def _write_snapshot_indexes(
    conn: sa.Connection,
    out: TextIO,
    indexes: tuple[list[deferred_indexes.Index], list[tuple[deferred_indexes.Index, str]]],
    *,
    partitioned: bool,
) -> None:
    """The indexes on the snapshot columns, which make the walk's updates non-HOT, and
    any that a backfill deferred and has not built again yet (docs/runbook.md)."""
    can, kept = indexes  # deferred_indexes.found
    pending = deferred_indexes.pending(conn)
    shown = [i.describe(conn.dialect) for i in can]
    shown += [f"{i.describe(conn.dialect)} [stays: {why}]" for i, why in kept]
    hint = "" if partitioned or not can else "; defer_indexes=on drops the others for the walk"
    if shown:
        out.write(f"Snapshot indexes: {', '.join(shown)} (the walk maintains them{hint})\n")
    if pending:
        out.write(
            "Deferred now:     "
            + ", ".join(i.describe(conn.dialect) for i in pending)
            + " (dropped by a backfill that has not finished; the next one builds them)\n"
        )


def _describe_join_back(mode: str, knobs: BackfillKnobs) -> str:
    """How the backfill's batches will find their rows again (docs/scale-out.md)."""
    how = "by session_id" if mode == KEY else "by ctid"
    if knobs.join_back != "auto":
        return f"{how} (join_back={knobs.join_back})"
    # auto chose by key exactly when the citus extension is installed
    return f"{how} (the citus extension is {'installed' if mode == KEY else 'not installed'})"


def _describe_walk_order(
    conn: sa.Connection, mode: str, knobs: BackfillKnobs, deferrable: list[deferred_indexes.Index]
) -> str:
    """The order a fresh backfill walks in, as its ``walk_order`` chooses it here
    (``blocks.refusal``, as the run asks it; a walk that resumes keeps its own order).
    ``deferrable``: the indexes ``defer_indexes=on`` would drop before the walk."""
    if knobs.walk_order == "key":
        return "by session_id (walk_order=key)"
    why = blocks.refusal(conn, mode == KEY, record=True)
    if not why:
        dropped = [i.name for i in deferrable] if knobs.defer_indexes else []
        count, because = blocks.rounds(conn, sql.SESSIONS_TABLE, dropped)
        return (
            f"by blocks of the table, {count} rounds a segment "
            f"({because}; walk_order={knobs.walk_order})"
        )
    if knobs.walk_order == "blocks":
        return f"refused ({blocks.insisted(why)})"
    return f"by session_id (walk_order=auto: {why})"


def _write_adoption(state: report.SchemaState, out: TextIO) -> None:
    """What the database is, and what `upgrade head` will adopt, reuse and create."""
    found = state.assessment
    if found is None or found.empty:
        return
    out.write(f"Schema:     {found.origin}\n")
    if state.current and "0004_snapshot_indexes" not in state.pending:
        return  # past the revisions that adopt: nothing left to plan
    if not state.current:
        out.write(f"Adopts:     tables {', '.join(found.tables)}")
        if found.snapshot_columns:
            out.write(f"; columns {', '.join(found.snapshot_columns)}")
        out.write("\n")
    if found.reuse:
        out.write(f"Reuses:     {', '.join(found.reuse)}\n")
    if found.create:
        out.write(f"Creates:    {', '.join(found.create)}\n")
    for legacy in found.legacy_columns:
        out.write(
            f"Legacy:     column session_summaries.{legacy} is left as it is (the upgrade "
            "adds snapshot_ip_type beside it; drop it yourself once nothing reads it)\n"
        )
