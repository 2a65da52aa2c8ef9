"""Everything the tests and the benchmarks stand on, in one place (as alembic ships
``alembic/testing``); ``tests/`` holds only tests and their fixtures.

* Servers: :mod:`.ephemeral_pg` (a throwaway PostgreSQL cluster), :mod:`.standby`
  (a primary with a streaming standby).
* Databases: :mod:`.databases` (throwaway databases and migrated copies of a template),
  :mod:`.field_schema` (the field's databases, built as cowrieprocessor's own schema code
  built them), :mod:`.partitioned` (the hash-partitioned shape).
* Data and what it should become: :mod:`.seed` (the one seeder, small explicit rows, and
  the reads the tests compare), :mod:`.oracle` (the expected snapshots, computed in Python).
* Commands: :mod:`.runners` (``alembic`` and ``cowrie-db`` as the tests run them),
  :mod:`.forkserver` (those commands forked from a Python that has imported their
  libraries, not each a new interpreter).
* Faults: :mod:`.reliability` (datasets, kill trials, outcomes, figures).

The demo data generator is not here: it serves ``make demo`` and the benchmarks too
(:mod:`cowrieprocessor.demo`).
"""
