"""The snapshot backfill: one engine behind the Alembic revision and the CLI.

It walks the table in key order, one range of rows at a time. For each range it
runs one set-based statement (resolve the canonical IP, join ``ip_inventory``, update
only the NULL snapshot columns of matched sessions) and saves its position in the
progress table, in one short transaction of its own. So:

* no row lock is held longer than one batch, and no table lock is taken;
* an interrupted run resumes after the last committed range, and ends with the same
  data as an uninterrupted one (the statement only fills NULLs from the inventory,
  so running a range twice is harmless);
* transient failures (lock timeout, deadlock, serialization failure, a lost
  connection, SQLite's "database is locked") are retried with exponential backoff; a
  range that hits ``statement_timeout`` is split in two; a failure that persists stops
  the run with :class:`BatchFailed`, naming the range and the cause.

After the walk, a catch-up pass looks again at every session without ``source_ip``
(every session the walk matched has one): the unmatched ones, and those the loader
inserted into ranges already walked, which get their snapshots too. On PostgreSQL it
lists their keys in one scan and takes them in batches (:class:`.keys.KeyListOrder`);
on SQLite it walks the ranges again. Either way it resolves and writes next to nothing.
Every session that exists without a snapshot when the catch-up starts is covered; one
inserted behind the catch-up itself is left to the loader (or the next run). A run
whose progress row says ``done`` is finished; the next run starts a fresh walk (it
changes only what still needs changing).

Each batch also writes the rollback record (:mod:`.record`), in its own transaction,
so that the downgrade undoes exactly what the backfill wrote. Range sizes are in
:mod:`.sizing`, key orders in :mod:`.keys`.

Where each idea lives (docs/architecture.md has the picture):

* :mod:`.knobs` the knobs (names, defaults, ranges, help: one table);
* :mod:`.sql` every statement, both dialects; :mod:`.shape` the JSON column types;
* :mod:`.keys` the key orders and ranges; :mod:`.sizing` how big the next range is;
* :mod:`.errors` what can fail, and which failures are transient;
* :mod:`.walker` the range walker (one transaction per range, leaves, splits);
* :mod:`.run` one run's state, its one owner (job state, engine state, waits, pace,
  leaves, knobs in force), its status file and progress lines;
* :mod:`.governor` what holds the next batch back (the operator, the server's health);
* :mod:`.transactions` the job's connection, its claim, retries of transient failures;
* :mod:`.progress` the progress table, the progress model, rates and ETAs;
* :mod:`.record` the rollback record; :mod:`.jobs` backfill, clear and undo;
  :mod:`.ranges` each job's work on one range, and the counts around a walk;
* :mod:`.alembic_ops` what a revision needs (the batch engine, the knobs).
"""

from cowrieprocessor.backfill.errors import BackfillError, BackfillInterrupted, BatchFailed
from cowrieprocessor.backfill.jobs import (
    BACKFILL_JOB,
    CLEAR_ALL_JOB,
    CLEAR_JOB,
    BackfillResult,
    ClearResult,
    clear_snapshots,
    run_backfill,
    undo_backfill,
)
from cowrieprocessor.backfill.knobs import BackfillKnobs, KnobError
from cowrieprocessor.backfill.walker import BatchReport

__all__ = [
    "BACKFILL_JOB",
    "CLEAR_ALL_JOB",
    "CLEAR_JOB",
    "BackfillError",
    "BackfillInterrupted",
    "BackfillKnobs",
    "BackfillResult",
    "BatchFailed",
    "BatchReport",
    "ClearResult",
    "KnobError",
    "clear_snapshots",
    "run_backfill",
    "undo_backfill",
]
