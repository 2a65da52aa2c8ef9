"""The knob flags of the commands that run a job (``backfill``, ``clear``, ``upgrade``,
``downgrade``): one flag per knob, generated from the knob table, and ``-x KEY=VALUE``
as with ``alembic -x``; what they give, validated once, before connecting."""

from __future__ import annotations

import argparse
from pathlib import Path

from cowrieprocessor.backfill import BackfillKnobs, KnobError
from cowrieprocessor.backfill.knobs import (
    AUTO_WORKERS,
    INT_KNOBS,
    JOIN_BACK_CHOICES,
    MAX_WORKERS,
    WALK_ORDERS,
)
from cowrieprocessor.cli.common import STATUS_FILE_NAME, CliError

# The knobs whose values are words, as flags: (name, metavar, help).
WORDED_KNOBS = (
    (
        "join_back",
        "|".join(JOIN_BACK_CHOICES),
        "PostgreSQL: how a batch finds its rows again, by ctid or by session_id "
        "(Citus); default auto: by session_id when the citus extension is installed",
    ),
    (
        "workers",
        "N|auto|auto:N",
        "PostgreSQL: connections walking disjoint stripes of the table at once "
        f"(1..{MAX_WORKERS}); auto: one per partition, at most {AUTO_WORKERS} (auto:N: at "
        "most N); default 1",
    ),
    (
        "defer_indexes",
        "on|off",
        "PostgreSQL: drop the indexes on the snapshot columns for the walk (its "
        "updates can then be HOT) and build them again CONCURRENTLY after it; default off",
    ),
    (
        "walk_order",
        "|".join(WALK_ORDERS),
        "walk ranges of session_id (key), or of the table's blocks in rounds (blocks: "
        "far less WAL where checkpoints come often; PostgreSQL 14+); default auto: by "
        "blocks where it can, else by key",
    ),
)


def add_knob_flags(parser: argparse.ArgumentParser) -> None:
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
    for name, metavar, text in WORDED_KNOBS:
        parser.add_argument(
            "--" + name.replace("_", "-"), dest=name, default=None, metavar=metavar, help=text
        )


def knobs_from_args(args: argparse.Namespace) -> BackfillKnobs:
    """The knobs of a job this process runs, validated once, before connecting."""
    return BackfillKnobs.from_sources(_knob_values(args))


def knob_x_args(args: argparse.Namespace) -> list[str]:
    """The knob flags and ``-x`` arguments given, as Alembic's ``-x`` list; validated
    here, once, before connecting (a bad value is refused before any revision runs)."""
    given = _knob_values(args)
    BackfillKnobs.from_sources(given)
    return [f"{k}={v}" for k, v in given.items() if v is not None]


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
    for name, _, _ in WORDED_KNOBS:
        flags[name] = getattr(args, name, None)
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
