# Everything installs itself: only Python 3.11+ and make are needed on the machine.
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
RUN := $(UV) run --frozen
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
PORT ?= 8000

.PHONY: help install demo test lint typecheck unit ui serve kafka validate bench clean

help:
	@echo "make demo      generate data, materialize every asset through Dagster, serve the API"
	@echo "make test      lint, type-check and run the whole test suite"
	@echo "make ui        open the Dagster UI on the demo's instance"
	@echo "make serve     run the read service on the existing tables"
	@echo "make bench     run the benchmarks (snapshot cost ratio; freshness p50/p95, needs Java 17)"
	@echo "make kafka     run a local single-node Kafka broker (needs Java 17 and Maven)"

install:
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	@$(UV) sync --frozen --quiet
	@mkdir -p $(DAGSTER_HOME)
	@test -f $(DAGSTER_HOME)/dagster.yaml || printf 'telemetry:\n  enabled: false\n' > $(DAGSTER_HOME)/dagster.yaml

demo: install
	$(RUN) sequence-platform demo --port $(PORT)

lint: install
	$(RUN) ruff check .
	$(RUN) ruff format --check .

typecheck: install
	$(RUN) mypy

unit: install
	$(RUN) pytest -q

test: lint typecheck unit

bench: install
	$(RUN) python benchmarks/bench_snapshot.py
	$(RUN) python benchmarks/bench_freshness.py

validate: install
	$(RUN) sequence-platform validate

ui: install
	$(RUN) dagster dev -w workspace.yaml

serve: install
	$(RUN) sequence-platform serve --port $(PORT)

kafka: install
	$(RUN) python -m sequence_platform_tests.kafka_broker

clean:
	rm -rf .sequence_platform .dagster_home .cache/kafka
