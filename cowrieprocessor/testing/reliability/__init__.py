"""The reliability tests' harness (the tests are in ``tests/reliability/``).

:mod:`.datasets` seeds the data (with :func:`cowrieprocessor.testing.seed.seed_random`,
the suite's one seeder) and runs it uninterrupted (the reference); :mod:`.outcomes`
compares what a run left with it; :mod:`.kills` aims and lands the ``kill -9``;
:mod:`.figures` publishes what was measured. The ``alembic`` child process is
:class:`cowrieprocessor.testing.runners.Alembic` and the throwaway databases are
:class:`cowrieprocessor.testing.databases.Databases`, as for the rest of the suite.
"""
