"""``cowrie-db``: the operator's command line.

    cowrie-db [--db URL] [--verbose] check                   pre-flight
    cowrie-db backfill [--dry-run] [--batch-size N] ...       run the backfill engine
    cowrie-db clear --all [--yes]                             NULL every snapshot value
    cowrie-db status [--json]                                 progress, from anywhere
    cowrie-db control pause|resume|stop                       steer the running job
    cowrie-db control set batch_time=100ms max_replica_lag=64MB    ... its knobs
    cowrie-db verify [--min-coverage 95] [--json]             validation, as one command
    cowrie-db demo-data --sessions N --ips M [--seed S]       synthetic data at 0002
    cowrie-db upgrade [REV] [--batch-time 100ms] [-x K=V]     alembic upgrade (head)
    cowrie-db downgrade REV                                   alembic downgrade
    cowrie-db current | history                               alembic current / history

``upgrade``, ``downgrade``, ``current`` and ``history`` are Alembic's own commands on
the migrations this package carries (:mod:`cowrieprocessor.migrate`), so an installed
wheel deploys a database without a checkout; in a checkout they are exactly
``alembic ...`` there.

The database is chosen as everywhere else (``--db``, then ``COWRIE_DB_URL``, then the
embedded SQLite default) and is only ever printed masked. ``--db`` and ``--verbose``
may come before or after the command, as operators type them. Exit status: 0 success,
1 a check failed, 2 bad usage or an unusable database, 130 interrupted (Ctrl-C).

Why one module of this size: each command is a parse-and-print function over
:mod:`cowrieprocessor.report` and the backfill jobs; none holds logic of its own.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import sqlalchemy as sa
from alembic import command as alembic_command
from alembic.config import Config
from alembic.util import CommandError
from sqlalchemy.exc import DBAPIError, OperationalError

from cowrieprocessor import __version__, migrate, report
from cowrieprocessor.backfill import (
    BACKFILL_JOB,
    BackfillInterrupted,
    BackfillKnobs,
    BatchReport,
    KnobError,
    clear_snapshots,
    control,
    progress,
    run_backfill,
)
from cowrieprocessor.backfill.control import FINISHED
from cowrieprocessor.backfill.governor import describe_waits
from cowrieprocessor.backfill.jobs import KEY, join_back_mode
from cowrieprocessor.backfill.knobs import INT_KNOBS, JOIN_BACK_CHOICES
from cowrieprocessor.backfill.progress import DONE
from cowrieprocessor.db.engine import create_engine_from_url
from cowrieprocessor.db.integrity import UnusableDatabase, as_unusable, require_usable_sqlite
from cowrieprocessor.errors import CowrieError, IncompatibleSchema
from cowrieprocessor.settings import (
    ENV_URL,
    SettingsError,
    mask_secrets,
    mask_url,
    parse_url,
    resolve_database_url,
)

log = logging.getLogger("cowrieprocessor.cli")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
STATUS_FILE_NAME = "snapshot_backfill.json"


class CliError(Exception):
    """An operator-facing error: printed as one line, exit status 2."""


# --- plumbing --------------------------------------------------------------------------


def _database_url(args: argparse.Namespace, *, may_create: bool = False) -> str:
    """The URL to use (``args.masked_url`` set for printing). A SQLite path the operator
    typed must exist, unless the command creates databases (``upgrade``): a typo must not
    create a database (and its folders) that then looks empty. The embedded default may
    not exist yet."""
    url = resolve_database_url(args.db, option=getattr(args, "db_option", "--db"))
    args.masked_url = mask_url(url)
    given = args.db or os.environ.get(ENV_URL)
    parsed = parse_url(url)
    if given and not may_create and parsed.get_backend_name() == "sqlite" and parsed.database:
        path = Path(parsed.database).expanduser()
        plain_file = not parsed.database.startswith("file:") and parsed.database != ":memory:"
        if plain_file and not path.exists():
            raise CliError(
                f"SQLite database {args.masked_url} does not exist (check the path; "
                "`cowrie-db upgrade` creates a new one)"
            )
    return url


def _engine(args: argparse.Namespace, **kwargs: Any) -> sa.Engine:
    return create_engine_from_url(_database_url(args), application_name="cowrie-db", **kwargs)


def _connect(engine: sa.Engine, masked: str) -> sa.Connection:
    try:
        return engine.connect()
    except (DBAPIError, OSError) as exc:
        detail = mask_secrets(str(getattr(exc, "orig", exc)).strip().splitlines()[0])
        raise CliError(f"cannot connect to {masked}: {detail}") from exc


def _print_json(data: Any, out: TextIO) -> None:
    out.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def _fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"


# --- check -----------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace, out: TextIO) -> int:
    engine = _engine(args)
    try:
        with _connect(engine, args.masked_url) as conn:
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
                    f"Estimated backfill:    {_fmt_seconds(estimate)} "
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
                if dialect == "postgresql":
                    out.write(f"Join-back:  {_describe_join_back(conn, knobs)}\n")
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


def _describe_join_back(conn: sa.Connection, knobs: BackfillKnobs) -> str:
    """How the backfill's batches will find their rows again (docs/scale-out.md)."""
    mode = join_back_mode(conn, knobs)
    how = "by session_id" if mode == KEY else "by ctid"
    if knobs.join_back != "auto":
        return f"{how} (join_back={knobs.join_back})"
    # auto chose by key exactly when the citus extension is installed
    return f"{how} (the citus extension is {'installed' if mode == KEY else 'not installed'})"


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


# --- backfill --------------------------------------------------------------------------


class ProgressBar:
    """A one-line progress bar on a terminal: the phase's rows, the rate, the job's ETA."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.phase = ""

    def __call__(self, r: BatchReport) -> None:
        if r.phase != self.phase:
            if self.phase:
                self.stream.write("\n")
            self.phase = r.phase
        rate, eta = r.progress.rate, r.progress.eta_seconds
        width = 30
        filled = int(width * r.done / r.total) if r.total else width
        self.stream.write(
            f"\r{r.phase:8} [{'#' * filled}{'.' * (width - filled)}] {r.done:,}/{r.total:,} "
            f"{rate:,.0f}/s ETA {_fmt_seconds(eta)}   "
        )
        self.stream.flush()

    def close(self) -> None:
        if self.phase:
            self.stream.write("\n")


def _add_knob_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per knob, generated from the knob table (name, range, help, default),
    and ``-x KNOB=VALUE`` as with ``alembic -x`` (the README's form)."""
    parser.add_argument(
        "-x",
        action="append",
        metavar="KEY=VALUE",
        help="as alembic -x: a backfill knob (e.g. -x batch_time=100ms) or db=URL; repeatable",
    )
    for knob in INT_KNOBS:
        unit = {
            "ms": " (ms, or with s / min)",
            "bytes": " (bytes, or with kB, MB, GB)",
            "bytes/s": " (e.g. 32MB/s)",
        }.get(knob.unit, "")
        parser.add_argument(
            "--" + knob.name.replace("_", "-"),
            dest=knob.name,
            default=None,
            metavar={"ms": "MS", "bytes": "BYTES", "bytes/s": "BYTES/S"}.get(knob.unit, "N"),
            help=f"{knob.help}{unit}; default {knob.show(knob.default)}",
        )
    parser.add_argument(
        "--status-dir", metavar="DIR", help=f"write {STATUS_FILE_NAME} there after each batch"
    )
    parser.add_argument(
        "--join-back",
        dest="join_back",
        default=None,
        metavar="|".join(JOIN_BACK_CHOICES),
        help="PostgreSQL: how a batch finds its rows again, by ctid or by session_id "
        "(Citus); default auto: by session_id when the citus extension is installed",
    )


def _x_items(args: argparse.Namespace) -> dict[str, str]:
    """The ``-x KEY=VALUE`` arguments given; ``-x db=URL`` names the database when
    ``--db`` does not, as with alembic."""
    items: dict[str, str] = {}
    for item in args.x or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CliError(f"-x {item!r}: expected KEY=VALUE (e.g. -x batch_time=100ms)")
        items[key.strip()] = value.strip()
    db = items.pop("db", None)
    if db is not None and args.db is None:  # an empty -x db= is refused, as --db "" is
        args.db, args.db_option = db, "-x db"
    return items


def _knob_values(args: argparse.Namespace) -> dict[str, str | int | None]:
    """Every knob the command line gives, ``-x`` and flags, unvalidated (a flag and an
    ``-x`` that name the same knob with different values are refused)."""
    explicit: dict[str, str | int | None] = dict(_x_items(args))
    flags: dict[str, str | None] = {k.name: getattr(args, k.name) for k in INT_KNOBS}
    flags["join_back"] = getattr(args, "join_back", None)
    for name, value in flags.items():
        if value is None:
            continue
        if name in explicit and explicit[name] != value:
            raise CliError(
                f"--{name.replace('_', '-')} {value} and -x {name}={explicit[name]} disagree; "
                "give one"
            )
        explicit[name] = value
    if args.status_dir is not None:
        status_dir = Path(args.status_dir)
        if not status_dir.is_dir():
            raise KnobError(f"--status-dir {args.status_dir!r} is not an existing folder")
        explicit["status_file"] = str(status_dir / STATUS_FILE_NAME)
    checkpoint = getattr(args, "checkpoint_file", None)
    if checkpoint is not None:
        # The old script's checkpoint file: here the status file (the position is in the
        # database). Its runbook names the same file as --status-dir's: one file, or say so.
        chosen = explicit.get("status_file")
        if chosen is not None and Path(str(chosen)).resolve() != Path(checkpoint).resolve():
            raise KnobError(
                f"--checkpoint-file {checkpoint!r} and --status-dir {args.status_dir!r} name "
                f"two status files; give one (--status-dir DIR writes DIR/{STATUS_FILE_NAME})"
            )
        explicit["status_file"] = checkpoint
    return explicit


def _knobs_from_args(args: argparse.Namespace) -> BackfillKnobs:
    """The knobs of a job this process runs, validated once, before connecting."""
    return BackfillKnobs.from_sources(_knob_values(args))


@contextmanager
def _ctrl_c_stops() -> Iterator[threading.Event]:
    """First Ctrl-C: set the event (stop after the current batch); second: abort it."""
    stop = threading.Event()
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(_signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():  # a second Ctrl-C: stop now (the open batch rolls back)
            raise KeyboardInterrupt
        stop.set()
        sys.stderr.write("\nCtrl-C: stopping after the current batch (again to abort it)\n")

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def _require_snapshot_columns(engine: sa.Engine, masked: str) -> None:
    """Before a job's first write: a sound file, a revision this package knows, and the
    columns the job fills."""
    with _connect(engine, masked) as conn:
        require_usable_sqlite(conn)
        state = report.schema_state(conn)
    if not state.snapshot_columns_present:
        raise CliError(
            "session_summaries has no snapshot columns yet: run "
            "`alembic upgrade 0002_snapshot_columns` first"
        )


def cmd_backfill(args: argparse.Namespace, out: TextIO) -> int:
    knobs = _knobs_from_args(args)
    engine = _engine(args, sqlite_busy_timeout_ms=knobs.lock_timeout)
    callbacks: list[Callable[[BatchReport], None]] = []
    bar: ProgressBar | None = None
    if args.progress and sys.stderr.isatty() and not args.dry_run:
        bar = ProgressBar(sys.stderr)
        callbacks.append(bar)
    if args.dry_run:

        def dry_line(r: BatchReport) -> None:
            c = r.counts
            log.info(
                "DRY RUN - Batch %d: would update %d sessions (%d/%d IPs found in inventory)",
                r.batch,
                c.updated,
                c.matched,
                c.candidates - c.no_ip,
            )

        callbacks.append(dry_line)

    def on_batch(r: BatchReport) -> None:
        for callback in callbacks:
            callback(r)

    log.info("Database: %s", args.masked_url)
    try:
        with _ctrl_c_stops() as stop:
            _require_snapshot_columns(engine, args.masked_url)
            if args.resume and not args.dry_run:
                _say_what_resumes(engine, args.masked_url)
            result = run_backfill(engine, knobs, dry_run=args.dry_run, stop=stop, on_batch=on_batch)
    except (BackfillInterrupted, KeyboardInterrupt) as exc:
        if bar:
            bar.close()
        return _interrupted(exc, "the same command (or `alembic upgrade head`)", out)
    finally:
        engine.dispose()
    if bar:
        bar.close()
    if args.json:
        data = asdict(result)
        data.pop("batch_seconds")
        _print_json(data, out)
    return EXIT_OK


def _say_what_resumes(engine: sa.Engine, masked: str) -> None:
    """``--resume`` (the old script's flag): every run resumes; say from where."""
    with _connect(engine, masked) as conn:
        saved = progress.load(conn, BACKFILL_JOB)
        conn.rollback()
    if saved is None or saved.phase == DONE:
        log.info("--resume: no interrupted backfill on this database; starting a new one")
    else:
        log.info(
            "--resume: continuing the %s phase after batch %d (%d sessions walked)",
            saved.phase,
            saved.batches,
            saved.sessions_walked,
        )


def _interrupted(exc: BaseException, resume: str, out: TextIO) -> int:
    if isinstance(exc, KeyboardInterrupt):
        out.write("Aborted: the open batch was rolled back; rerun to resume.\n")
    else:
        out.write(f"Interrupted: {exc}\nResume with {resume}; committed batches are kept.\n")
    return EXIT_INTERRUPTED


# --- clear -----------------------------------------------------------------------------

CONFIRM_WORD = "clear"


def cmd_clear(args: argparse.Namespace, out: TextIO) -> int:
    """NULL every snapshot value, whoever wrote it (the runbook's data-corruption case)."""
    if not args.all:
        raise CliError(
            "say what to clear: --all NULLs the five snapshot columns of every session, "
            "including values the loader wrote at the time of the attack. To undo only "
            "what the backfill wrote, run `alembic downgrade 0002_snapshot_columns`."
        )
    knobs = _knobs_from_args(args)
    engine = _engine(args, sqlite_busy_timeout_ms=knobs.lock_timeout)
    try:
        _require_snapshot_columns(engine, args.masked_url)
        with _connect(engine, args.masked_url) as conn:
            having = report.sessions_with_snapshot_values(conn)
        if not args.yes:
            question = (
                f"This NULLs the five snapshot columns of {having:,} sessions in "
                f"{args.masked_url}, whoever wrote them; the backfill can refill them only "
                "from today's inventory. "
            )
            if not sys.stdin.isatty():
                raise CliError(question + "Refusing without confirmation: add --yes.")
            out.write(question + f"Type {CONFIRM_WORD!r} to go on: ")
            out.flush()
            if input().strip() != CONFIRM_WORD:
                out.write("Nothing was changed.\n")
                return EXIT_FAILED
        log.info("Database: %s", args.masked_url)
        with _ctrl_c_stops() as stop:
            result = clear_snapshots(engine, knobs, stop=stop)
    except (BackfillInterrupted, KeyboardInterrupt) as exc:
        return _interrupted(exc, "the same command", out)
    finally:
        engine.dispose()
    out.write(
        f"Cleared snapshot values in {result.rows_cleared:,} sessions ({result.batches:,} "
        f"batches, {result.seconds:.1f} s). Refill them with `cowrie-db backfill`.\n"
    )
    return EXIT_OK


# --- status ----------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    engine = _engine(args)
    try:
        with _connect(engine, args.masked_url) as conn:
            state = report.schema_state(conn)
            jobs = report.job_status(conn)
    finally:
        engine.dispose()
    status_file: dict[str, Any] | None = None
    if args.status_file:
        path = Path(args.status_file)
        if path.is_dir():
            path = path / STATUS_FILE_NAME
        try:
            status_file = json.loads(path.read_text())
        except FileNotFoundError:
            raise CliError(f"status file {path} does not exist") from None
        except json.JSONDecodeError as exc:
            raise CliError(f"status file {path} is not JSON: {exc}") from None
    if args.json:
        _print_json(
            {
                "database": args.masked_url,
                "revision": state.current,
                "head": state.head,
                "jobs": [j.as_dict() for j in jobs],
                "status_file": status_file,
            },
            out,
        )
        return EXIT_OK
    out.write(f"Database: {args.masked_url}\n")
    out.write(f"Revision: {', '.join(state.current) or '(none)'} (head {state.head})\n")
    if not jobs:
        out.write("No backfill has run on this database (no progress records).\n")
    for j in jobs:
        flag = "  STALLED?" if j.stalled else ""
        out.write(
            f"{j.job}: phase {j.phase}, {j.percent:.1f}% of the job ({j.done:,}/{j.total:,} "
            f"in this phase), {j.batch:,} batches, {j.rows_updated:,} rows updated\n"
            f"  rate {j.rate:,.0f} sessions/s, ETA {_fmt_seconds(j.eta_seconds)}, "
            f"last update {j.seconds_since_update:.0f} s ago{flag}\n"
        )
        out.write(f"  state: {_describe_state(j)}\n")
        if j.running and j.knobs:
            out.write("  knobs: " + ", ".join(f"{k}={v}" for k, v in j.knobs.items()) + "\n")
        if j.waits:
            out.write(f"  held back: {describe_waits(j.waits)}\n")
        if j.partitions:
            out.write(f"  partitions ({j.phase}):\n")
            for leaf in j.partitions:
                out.write(f"    {leaf.name}: {leaf.state} (about {leaf.sessions:,} sessions)\n")
    if status_file is not None:
        out.write(f"Status file: {json.dumps(status_file, sort_keys=True)}\n")
    return EXIT_OK


def _describe_state(j: report.JobStatus) -> str:
    if j.running:
        detail = f" ({j.run_detail})" if j.run_detail else ""
        share = f", {100 * j.wait_share:.0f}% of the last 2 min waiting" if j.wait_share else ""
        return f"{j.run_state}{detail}{share}"
    if j.phase == DONE:
        return "finished"
    return (
        "not running (stopped, or its process ended without finishing): rerun it to resume"
        if j.run_state != FINISHED
        else "not running"
    )


# --- control ---------------------------------------------------------------------------

CONTROL_ACK_POLL_S = 0.25


def cmd_control(args: argparse.Namespace, out: TextIO) -> int:
    """Steer the running job from another terminal (:mod:`cowrieprocessor.backfill.control`)."""
    settings: dict[str, str] = {}
    if args.action == "set":
        if not args.settings:
            raise CliError("set what? e.g. `cowrie-db control set batch_time=100ms pause_ms=20`")
        for item in args.settings:
            name, sep, value = item.partition("=")
            if not sep or not name.strip() or not value.strip():
                raise CliError(f"{item!r} is not name=value (e.g. batch_time=100ms)")
            settings[name.strip().replace("-", "_")] = value.strip()
        BackfillKnobs().with_overrides(settings, control.SET_SOURCE)  # bad input: exit 2
    elif args.settings:
        raise CliError(
            f"`control {args.action}` takes no arguments (got {' '.join(args.settings)})"
        )
    engine = _engine(args)
    try:
        with _connect(engine, args.masked_url) as conn:
            report.current_revisions(conn)  # a newer release's progress row: hands off
            try:
                job = control.request(conn, args.action, settings or None)
            except control.NoJobRunning as exc:
                out.write(f"{exc}.\n")
                return EXIT_FAILED
            out.write(f"{args.action}: sent to {job.describe()} on {args.masked_url}\n")
            acked = _wait_for_ack(conn, args.action, job, args.timeout)
    finally:
        engine.dispose()
    if acked is None:
        out.write(
            f"not acknowledged within {args.timeout:g} s (a long batch?); the command stays "
            "asked for: `cowrie-db status` shows when it is taken\n"
        )
    else:
        out.write(f"{acked}\n")
    return EXIT_OK


def _wait_for_ack(
    conn: sa.Connection, action: str, sent: control.RunningJob, timeout: float
) -> str | None:
    """Wait until the engine shows it took the command; what it shows, or None."""
    deadline = time.monotonic() + timeout
    while True:
        now = control.running_job(conn)
        if now is None or now.job != sent.job:
            if action == "stop":
                return "stopped; rerun the same command to resume"
            return "the job is no longer running (it ended)"
        if action == "pause" and now.run_state == control.PAUSED:
            return "paused: no batch starts until `cowrie-db control resume`"
        if action == "resume" and now.run_state != control.PAUSED:
            return f"resumed: {now.run_state}"
        if action == "stop" and now.run_state == control.STOPPING:
            return "stopping after the current batch; rerun the same command to resume"
        if action == "set" and int(now.info.get("control_seq_applied", 0)) > sent.control_seq:
            knobs = now.info.get("knobs", {})
            return "knobs in force: " + ", ".join(f"{k}={v}" for k, v in knobs.items())
        if time.monotonic() >= deadline:
            return None
        time.sleep(CONTROL_ACK_POLL_S)


# --- verify ----------------------------------------------------------------------------


def cmd_verify(args: argparse.Namespace, out: TextIO) -> int:
    engine = _engine(args)
    try:
        with _connect(engine, args.masked_url) as conn:
            if not report.schema_state(conn).snapshot_columns_present:
                raise CliError("session_summaries has no snapshot columns: nothing to verify")
            v = report.verify(conn, args.min_coverage)
    finally:
        engine.dispose()
    if args.json:
        _print_json({"database": args.masked_url, **v.as_dict(), "ok": not v.failures}, out)
        return EXIT_FAILED if v.failures else EXIT_OK
    ok, bad = "PASS", "FAIL"
    out.write(f"Database: {args.masked_url}\n")
    out.write(
        f"[{bad if v.coverage_percent < v.min_coverage else ok}] coverage "
        f"{v.with_snapshot:,}/{v.sessions:,} ({v.coverage_percent:.2f}%, minimum "
        f"{v.min_coverage:g}%)\n"
    )
    out.write(
        f"[{bad if v.matched_missing_snapshot else ok}] matched sessions still lacking "
        f"snapshots: {v.matched_missing_snapshot:,}\n"
    )
    ios = {True: ok, False: bad, None: "----"}[v.index_only_scan]
    out.write(f"[{ios}] runbook query by index-only scan: {' / '.join(v.plan)}\n")
    out.write(f"[{ok if v.at_head else bad}] schema at head\n")
    out.write(
        f"[info] snapshot vs current inventory: {v.asn_divergent:,} ASN and "
        f"{v.country_divergent:,} country divergences (expected: IPs move)\n"
    )
    out.write(
        "[info] constraints: " + ", ".join(f"{k} {s}" for k, s in v.constraints.items()) + "\n"
    )
    for row in v.sample:
        out.write(f"  sample: {row}\n")
    for failure in v.failures:
        out.write(f"FAILED: {failure}\n")
    out.write("Verification " + ("failed\n" if v.failures else "passed\n"))
    return EXIT_FAILED if v.failures else EXIT_OK


# --- demo-data -------------------------------------------------------------------------


def cmd_demo_data(args: argparse.Namespace, out: TextIO) -> int:
    from cowrieprocessor.testing.demo import DemoDataError, DemoSpec, generate

    engine = _engine(args)
    try:
        with _connect(engine, args.masked_url) as conn:
            require_usable_sqlite(conn)
            report.current_revisions(conn)
        spec = DemoSpec(sessions=args.sessions, ips=args.ips, seed=args.seed)
        log.info("Database: %s; generating %s", args.masked_url, spec)
        result = generate(engine, spec, force=args.force)
    except DemoDataError as exc:
        raise CliError(str(exc)) from exc
    finally:
        engine.dispose()
    out.write(
        f"Generated {result.sessions:,} sessions, {result.ips:,} IPs, {result.asns:,} "
        f"ASNs, {result.raw_events:,} raw events ({result.unmatched_sessions:,} sessions "
        f"unmatched, {result.raw_only_sessions:,} known only from raw events) in "
        f"{result.seconds:.1f} s\n"
    )
    return EXIT_OK


# --- upgrade, downgrade, current, history: Alembic on the migrations this package ships ---


def _knob_x_args(args: argparse.Namespace) -> list[str]:
    """The knob flags and ``-x`` arguments given, as Alembic's ``-x`` list; validated
    here, once, before connecting (a bad value is refused before any revision runs)."""
    given = _knob_values(args)
    BackfillKnobs.from_sources(given)
    return [f"{k}={v}" for k, v in given.items() if v is not None]


# Alembic's command, and whether it may create the database (a SQLite file), by name.
ALEMBIC_COMMANDS: dict[str, tuple[Callable[[Config, argparse.Namespace], None], bool]] = {
    "upgrade": (lambda cfg, a: alembic_command.upgrade(cfg, a.revision, sql=a.sql), True),
    "downgrade": (lambda cfg, a: alembic_command.downgrade(cfg, a.revision, sql=a.sql), False),
    "current": (lambda cfg, a: alembic_command.current(cfg, verbose=a.verbose), False),
    "history": (
        lambda cfg, a: alembic_command.history(cfg, verbose=a.verbose, indicate_current=True),
        False,
    ),
}


def cmd_alembic(args: argparse.Namespace, out: TextIO) -> int:
    """``upgrade``, ``downgrade``, ``current``, ``history``: Alembic's own command."""
    action, may_create = ALEMBIC_COMMANDS[args.command]
    x = _knob_x_args(args) if hasattr(args, "x") else []
    url = _database_url(args, may_create=may_create)
    if args.command != "history" and not getattr(args, "sql", False):
        _require_migratable(url, args.masked_url, writes=args.command != "current")
    cfg = migrate.alembic_config(url, x)
    # env.py may skip its own quick_check: this process just ran it on this file.
    cfg.attributes["sqlite_integrity_checked"] = True
    cfg.stdout = out
    cfg.output_buffer = out  # --sql
    if not getattr(args, "sql", False):
        log.info("Database: %s; migrations: %s", args.masked_url, migrate.script_location())
    logging.getLogger("alembic").setLevel(logging.INFO)
    try:
        action(cfg, args)
    except (BackfillInterrupted, KeyboardInterrupt) as exc:
        return _interrupted(exc, "the same command", out)
    except CommandError as exc:
        raise CliError(mask_secrets(str(exc))) from exc
    return EXIT_OK


def _require_migratable(url: str, masked: str, *, writes: bool) -> None:
    """Before Alembic runs: the server answers, the file is a sound database (when the
    command writes), and its revision is one this package knows (a newer release's
    database is refused in our words, not as Alembic's "Can't locate revision")."""
    engine = create_engine_from_url(url, application_name="cowrie-db")
    try:
        with _connect(engine, masked) as conn:
            if writes:
                require_usable_sqlite(conn)
            report.current_revisions(conn)
    finally:
        engine.dispose()


# --- parser ----------------------------------------------------------------------------


def _percent(text: str) -> float:
    """A percentage, 0 to 100 (argparse reports the problem and exits 2)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (0 to 100)") from None
    if not math.isfinite(value) or not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{text} is not a percentage from 0 to 100")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cowrie-db",
        description="Operate cowrieprocessor's database: pre-flight, snapshot backfill, "
        "status and verification.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_global_options(parser, None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        """A command that also takes the global options after its name."""
        made = commands.add_parser(name, **kwargs)
        _add_global_options(made, argparse.SUPPRESS)
        return made

    check = command("check", help="pre-flight: connectivity, schema, counts, estimate")
    check.add_argument(
        "--batch-size", type=int, default=None, help="batch size to sample for the time estimate"
    )
    check.set_defaults(func=cmd_check)

    bf = command("backfill", help="run the snapshot backfill (same engine as 0003)")
    bf.add_argument("--dry-run", action="store_true", help="write nothing; report per batch")
    _add_knob_flags(bf)
    bf.add_argument(
        "--progress", action="store_true", help="a progress bar on a terminal (log lines otherwise)"
    )
    bf.add_argument("--json", action="store_true", help="print the final summary as JSON")
    bf.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted backfill (it always does: the position is in the "
        "database; kept for the old script's command lines)",
    )
    bf.add_argument(
        "--checkpoint-file",
        metavar="PATH",
        help="the old script's checkpoint: here the status file, written after each batch "
        "(the position itself is in the database)",
    )
    bf.set_defaults(func=cmd_backfill)

    cl = command(
        "clear",
        help="NULL every snapshot value, whoever wrote it (batched, resumable, confirmed)",
    )
    cl.add_argument("--all", action="store_true", help="every session's five snapshot columns")
    cl.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    _add_knob_flags(cl)
    cl.set_defaults(func=cmd_clear)

    st = command("status", help="progress of a running or finished backfill")
    st.add_argument("--json", action="store_true")
    st.add_argument("--status-file", metavar="PATH", help="also show this status file (or dir)")
    st.set_defaults(func=cmd_status)

    co = command(
        "control",
        help="steer the running backfill or clear: pause, resume, stop, set KNOB=VALUE ...",
        description="Steer the job running on this database from another terminal, "
        "through its progress row: it takes the command before its next batch.",
    )
    co.add_argument("action", choices=("pause", "resume", "stop", "set"))
    co.add_argument(
        "settings", nargs="*", metavar="KNOB=VALUE", help="for set: e.g. batch_time=100ms"
    )
    co.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for the job to acknowledge (default 30)",
    )
    co.set_defaults(func=cmd_control)

    ve = command("verify", help="validate the backfill (non-zero exit on failure)")
    ve.add_argument("--min-coverage", type=_percent, default=95.0, metavar="PERCENT")
    ve.add_argument("--json", action="store_true")
    ve.set_defaults(func=cmd_verify)

    def migration_options(made: argparse.ArgumentParser) -> None:
        made.add_argument("--sql", action="store_true", help="print the SQL, run nothing")
        _add_knob_flags(made)

    up = command(
        "upgrade",
        help="apply the migrations this package ships (alembic upgrade), head by default",
    )
    up.add_argument("revision", nargs="?", default="head", help="target (default: head)")
    migration_options(up)
    up.set_defaults(func=cmd_alembic)

    down = command("downgrade", help="revert to REVISION (alembic downgrade), e.g. 0002")
    down.add_argument("revision", help="target revision, e.g. 0002_snapshot_columns, or base")
    migration_options(down)
    down.set_defaults(func=cmd_alembic)

    cur = command("current", help="the database's revision (alembic current)")
    cur.set_defaults(func=cmd_alembic)

    hist = command("history", help="the revisions this package ships, the current one marked")
    hist.set_defaults(func=cmd_alembic)

    demo = command("demo-data", help="fill a database at 0002 with synthetic data")
    demo.add_argument("--sessions", type=int, required=True)
    demo.add_argument("--ips", type=int, required=True)
    demo.add_argument("--seed", type=int, default=1)
    demo.add_argument("--force", action="store_true", help="add to a non-empty database")
    demo.set_defaults(func=cmd_demo_data)
    return parser


def _add_global_options(parser: argparse.ArgumentParser, default: Any) -> None:
    """``--db`` and ``--verbose``: on the main parser, and (``default=SUPPRESS``, so that
    they override only when given) on each command, after its name."""
    parser.add_argument(
        "--db",
        metavar="URL",
        default=default,
        help="database URL (default: $COWRIE_DB_URL, else the embedded SQLite)",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=default, help="more detail and logs"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s [%(levelname)8s] %(name)s: %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        stream=sys.stderr,
    )
    if not args.verbose:
        logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        code: int = args.func(args, sys.stdout)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return code
    except BrokenPipeError:
        # The reader went away (`cowrie-db check | head -1`): stop quietly, as Python's
        # documentation recommends (stdout to devnull, so the exit's flush cannot fail).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED
    except KeyboardInterrupt:  # backfill, clear and upgrade say how to resume themselves
        sys.stderr.write(f"\ncowrie-db {args.command}: interrupted (Ctrl-C)\n")
        return EXIT_INTERRUPTED
    except control.NoJobRunning as exc:
        sys.stderr.write(f"cowrie-db {args.command}: {exc}\n")
        return EXIT_FAILED
    except (CliError, KnobError, SettingsError, CowrieError) as exc:
        sys.stderr.write(f"cowrie-db {args.command}: error: {mask_secrets(str(exc))}\n")
        usage = isinstance(
            exc, CliError | KnobError | SettingsError | IncompatibleSchema | UnusableDatabase
        )
        return EXIT_USAGE if usage else EXIT_FAILED
    except DBAPIError as exc:
        # A damaged page found by a read (status, verify) is named as the check names it.
        unusable = as_unusable(_sqlite_file(args), exc)
        if unusable is not None:
            sys.stderr.write(f"cowrie-db {args.command}: error: {unusable}\n")
            return EXIT_USAGE
        if not isinstance(exc, OperationalError):
            raise  # a bug, not the operator's input: keep the traceback
        detail = mask_secrets(str(exc.orig).strip().splitlines()[0])
        sys.stderr.write(f"cowrie-db {args.command}: database error: {detail}\n")
        return EXIT_USAGE


def _sqlite_file(args: argparse.Namespace) -> str:
    """The SQLite file the command used ('' for another dialect, or before one was chosen)."""
    try:
        url = parse_url(resolve_database_url(args.db))
    except SettingsError:
        return ""
    return str(url.database or "") if url.get_backend_name() == "sqlite" else ""


if __name__ == "__main__":
    raise SystemExit(main())
