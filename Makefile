# Entry points. `make run` and `make test` set up everything they need on a fresh machine.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
UV_VERSION ?= 0.13.9
UV := $(PYTHON) -m uv
VENV := .venv
PY := $(VENV)/bin/python
PYTEST := $(VENV)/bin/pytest
export OUTREACH_CACHE_DIR ?= $(HOME)/.cache/proactive-outreach
PYTEST_FLAGS ?= -q -p no:cacheprovider
# `make test` runs the suite in two processes, a test file at a time each (each with its
# own broker and PostgreSQL): the end-to-end tests mostly wait, so the two cores overlap
# them with the rest. PYTEST_PARALLEL= runs it in one.
PYTEST_PARALLEL ?= -n 2 --dist loadfile --durations=25

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

.PHONY: uv
uv:
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

$(VENV)/.synced: pyproject.toml uv.lock | uv
	$(UV) sync --frozen --python $(PYTHON) --quiet
	@touch $@

.PHONY: venv
venv: $(VENV)/.synced ## create the virtualenv from the lock file

.PHONY: system-deps
system-deps: ## install system packages the tests need (Java, Maven, PostgreSQL, ...)
	@bash deploy/dev/system-deps.sh

.PHONY: kafka-up
kafka-up: venv system-deps ## start the local single-node Kafka (KRaft) on 127.0.0.1:9092
	$(PY) deploy/kafka/local_kafka.py up

.PHONY: kafka-down
kafka-down: ## stop the local Kafka started by kafka-up
	$(PY) deploy/kafka/local_kafka.py down

.PHONY: run
run: venv system-deps studio-assets ## the whole pipeline locally: Kafka, four services, simulated shop
	$(PY) -m deploy.local.run

.PHONY: simulate
simulate: venv ## publish a simulated shop to $$KAFKA_BOOTSTRAP_SERVERS
	$(PY) -m simulator $(SIMULATE_ARGS)

.PHONY: test
test: venv system-deps studio-assets ## every test: lint, unit, integration (real Kafka, PostgreSQL), e2e
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory check-protos
	$(PYTEST) $(PYTEST_FLAGS) $(PYTEST_PARALLEL) tests

.PHONY: test-unit
test-unit: venv ## unit tests only (no servers)
	$(PYTEST) $(PYTEST_FLAGS) tests/unit

.PHONY: test-integration
test-integration: venv system-deps ## integration tests (real Kafka, PostgreSQL, provider doubles)
	$(PYTEST) $(PYTEST_FLAGS) tests/integration

.PHONY: test-e2e
test-e2e: venv system-deps ## end-to-end: the four services as processes on a real broker
	$(PYTEST) $(PYTEST_FLAGS) tests/e2e

.PHONY: chaos
chaos: venv system-deps ## the whole fault matrix (docs/reliability.md): four services, own broker and PostgreSQL, faulty providers; prints the table
	$(PY) -m tests.chaos $(CHAOS_ARGS)

.PHONY: lint
lint: venv ## ruff (lint + format check) and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy common services simulator bench replay

.PHONY: format
format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

-include mk/*.mk

# Arguments per benchmark, e.g. BENCH_RISK_ARGS=--quick (risk_detector, 10k customers).
BENCH_ARGS ?=
BENCH_OUTREACH_ARGS ?=
BENCH_RISK_ARGS ?=
# e.g. BENCH_STORM_ARGS="--orders 100000" or "--outreach-workers 2"
BENCH_STORM_ARGS ?=

.PHONY: bench
bench: venv system-deps ## benchmarks on the real local broker (figures in docs/performance.md)
	$(PY) -m bench.watcher_throughput $(BENCH_ARGS)
	$(PY) -m bench.watcher_deadletters
	$(PY) -m bench.outreach_delivery $(BENCH_OUTREACH_ARGS)
	$(PY) -m bench.risk_throughput $(BENCH_RISK_ARGS)
	$(MAKE) --no-print-directory bench-preferences
	$(MAKE) --no-print-directory bench-storm
	$(MAKE) --no-print-directory bench-rehearsal

.PHONY: bench-rehearsal
bench-rehearsal: venv system-deps ## a rehearsal of a week of 10,000 orders a day (docs/rehearsal.md)
	$(PY) -m bench.rehearsal $(BENCH_REHEARSAL_ARGS)

.PHONY: bench-storm
bench-storm: venv system-deps ## a carrier storm through the four services (20,000 parcels; PostgreSQL, rate-limited provider doubles)
	$(PY) -m bench.storm $(BENCH_STORM_ARGS)
