"""``cowrie-db backfill`` and ``cowrie-db clear``: the commands that run a job of the
backfill engine (:mod:`cowrieprocessor.backfill`) in this process, with its knobs from
the command line, a progress bar or log lines, and Ctrl-C to stop after the batch."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import asdict
from typing import TextIO

import sqlalchemy as sa

from cowrieprocessor import report
from cowrieprocessor.backfill import (
    BACKFILL_JOB,
    BackfillInterrupted,
    BatchReport,
    clear_snapshots,
    progress,
    run_backfill,
)
from cowrieprocessor.backfill.progress import DONE
from cowrieprocessor.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    AddCommand,
    CliError,
    connect,
    ctrl_c_stops,
    fmt_seconds,
    interrupted,
    log,
    open_engine,
    print_json,
)
from cowrieprocessor.cli.knob_flags import add_knob_flags, knobs_from_args
from cowrieprocessor.db.integrity import require_usable_sqlite

CONFIRM_WORD = "clear"


def register(command: AddCommand) -> None:
    bf = command("backfill", help="run the snapshot backfill (same engine as 0003)")
    bf.add_argument("--dry-run", action="store_true", help="write nothing; report per batch")
    add_knob_flags(bf)
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
    add_knob_flags(cl)
    cl.set_defaults(func=cmd_clear)


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
        workers = len(r.progress.workers)
        self.stream.write(
            f"\r{r.phase:8} [{'#' * filled}{'.' * (width - filled)}] {r.done:,}/{r.total:,} "
            f"{rate:,.0f}/s ETA {fmt_seconds(eta)}{f' ({workers} stripes)' if workers else ''}   "
        )
        self.stream.flush()

    def close(self) -> None:
        if self.phase:
            self.stream.write("\n")


def cmd_backfill(args: argparse.Namespace, out: TextIO) -> int:
    knobs = knobs_from_args(args)
    # the job's connection and one per worker, as the revision's engine has them
    pool = {"pool_size": knobs.workers + 1} if knobs.workers > 5 else {}
    engine = open_engine(args, sqlite_busy_timeout_ms=knobs.lock_timeout, **pool)
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
        with ctrl_c_stops() as stop:
            _require_snapshot_columns(engine, args.masked_url)
            if args.resume and not args.dry_run:
                _say_what_resumes(engine, args.masked_url)
            result = run_backfill(engine, knobs, dry_run=args.dry_run, stop=stop, on_batch=on_batch)
    except (BackfillInterrupted, KeyboardInterrupt) as exc:
        if bar:
            bar.close()
        return interrupted(exc, "the same command (or `alembic upgrade head`)", out)
    finally:
        engine.dispose()
    if bar:
        bar.close()
    if args.json:
        data = asdict(result)
        data.pop("batch_seconds")
        print_json(data, out)
    return EXIT_OK


def _require_snapshot_columns(engine: sa.Engine, masked: str) -> None:
    """Before a job's first write: a sound file, a revision this package knows, and the
    columns the job fills."""
    with connect(engine, masked) as conn:
        require_usable_sqlite(conn)
        state = report.schema_state(conn)
    if not state.snapshot_columns_present:
        raise CliError(
            "session_summaries has no snapshot columns yet: run "
            "`alembic upgrade 0002_snapshot_columns` first"
        )


def _say_what_resumes(engine: sa.Engine, masked: str) -> None:
    """``--resume`` (the old script's flag): every run resumes; say from where."""
    with connect(engine, masked) as conn:
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


# --- clear -----------------------------------------------------------------------------


def cmd_clear(args: argparse.Namespace, out: TextIO) -> int:
    """NULL every snapshot value, whoever wrote it (the runbook's data-corruption case)."""
    if not args.all:
        raise CliError(
            "say what to clear: --all NULLs the five snapshot columns of every session, "
            "including values the loader wrote at the time of the attack. To undo only "
            "what the backfill wrote, run `alembic downgrade 0002_snapshot_columns`."
        )
    knobs = knobs_from_args(args)
    engine = open_engine(args, sqlite_busy_timeout_ms=knobs.lock_timeout)
    try:
        _require_snapshot_columns(engine, args.masked_url)
        with connect(engine, args.masked_url) as conn:
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
        with ctrl_c_stops() as stop:
            result = clear_snapshots(engine, knobs, stop=stop)
    except (BackfillInterrupted, KeyboardInterrupt) as exc:
        return interrupted(exc, "the same command", out)
    finally:
        engine.dispose()
    out.write(
        f"Cleared snapshot values in {result.rows_cleared:,} sessions ({result.batches:,} "
        f"batches, {result.seconds:.1f} s). Refill them with `cowrie-db backfill`.\n"
    )
    return EXIT_OK
