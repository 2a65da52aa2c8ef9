"""Reliability under real faults and load: nothing is lost, nothing is half-written.

Every fault here is real, on a real database, with no mocks: ``kill -9`` of the
``alembic`` process at random moments (``test_kill``), ``pg_terminate_backend`` of the
backfill's backend while its UPDATE runs, row locks held by another transaction and a
tiny ``statement_timeout`` (``test_postgres_faults``), a writer ingesting sessions while
the backfill runs (``test_concurrency``), SQLite's write lock held by another process, a
file-size limit (the disk is full) and a read-only database file (``test_sqlite_faults``),
passwords and hostile values that must never leak or run (``test_secrets``), and a
corpus of malformed input (``test_bad_input``). After each fault the run is finished by
rerunning the real command, and every row's five snapshot columns are compared with an
uninterrupted run over the same data.

The harness is :mod:`cowrieprocessor.testing.reliability`; the datasets are fixtures in
``conftest.py``, built once per dialect for the whole package.

What the tests measure is printed (``pytest -s``) and, when ``COWRIE_RELIABILITY_FIGURES``
names a file, appended to it as JSON lines; docs/reliability.md publishes the figures.
Kill moments come from a seeded random generator: the seed is in every failure message
and can be fixed with ``COWRIE_RELIABILITY_SEED``.
"""
