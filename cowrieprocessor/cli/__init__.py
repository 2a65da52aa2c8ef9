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

Each command is a parse-and-print function over :mod:`cowrieprocessor.report` and the
backfill jobs, in a module of its own that also registers its subparser:

* :mod:`.check` ``check``; :mod:`.jobs` ``backfill`` and ``clear``; :mod:`.status`
  ``status``; :mod:`.control` ``control``; :mod:`.verify` ``verify``;
  :mod:`.alembic_commands` ``upgrade``, ``downgrade``, ``current``, ``history``;
  :mod:`.demo` ``demo-data``;
* :mod:`.knob_flags` the knob flags and ``-x`` of the commands that run a job;
* :mod:`.common` the database URL and engine, printing, exit statuses, ``CliError``,
  Ctrl-C;
* :mod:`.parser` the parser (the global options, the modules' subparsers in order);
* :mod:`.entry` ``main``: run the command, errors to one line and an exit status.
"""

from cowrieprocessor.cli.entry import main
from cowrieprocessor.cli.parser import build_parser

__all__ = ["build_parser", "main"]
