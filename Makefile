# Everything installs itself: only Python 3.11+ and make are needed on the machine.
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
RUN := $(UV) run --frozen
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
PORT ?= 8000
# Root installs system packages itself; anyone else through sudo, when there is one.
SUDO := $(if $(filter 0,$(shell id -u)),,$(shell command -v sudo 2>/dev/null))

.PHONY: help install wrk chromium demo test lint typecheck unit ui serve kafka validate bench clean

help:
	@echo "make demo      generate data, materialize every asset through Dagster, serve the API"
	@echo "make test      lint, type-check and run the whole test suite"
	@echo "make ui        open the Dagster UI on the demo's instance"
	@echo "make serve     run the read service on the existing tables"
	@echo "make bench     run the benchmarks against their baselines (BENCH_ARGS='--events 5M' ...)"
	@echo "make kafka     run a local single-node Kafka broker (needs Java 17 and Maven)"

install:
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	@$(UV) sync --frozen --quiet --compile-bytecode
	@$(RUN) python -m sequence_platform.orchestration.instance "$(DAGSTER_HOME)"

# wrk, the HTTP load generator of the serving benchmark (and of its smoke test).
wrk:
	@command -v wrk >/dev/null 2>&1 || { \
	  echo "installing wrk (HTTP load generator for benchmarks/bench_serving.py)"; \
	  if command -v apt-get >/dev/null 2>&1; then \
	    $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null 2>&1 || \
	      { $(SUDO) apt-get update -qq >/dev/null && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }; \
	  elif command -v brew >/dev/null 2>&1; then brew install wrk; fi; \
	  command -v wrk >/dev/null 2>&1 || \
	    echo "could not install wrk: the serving benchmark's smoke test skips (fails with CI=true)"; \
	}

# Debian's chromium, the browser the Dagster UI test drives through Playwright (never
# `playwright install`, which downloads a browser build of its own).
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  echo "installing chromium (headless browser for sequence_platform_tests/test_dagster_ui.py)"; \
	  if command -v apt-get >/dev/null 2>&1; then \
	    $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 || \
	      { $(SUDO) apt-get update -qq >/dev/null && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; \
	  elif command -v brew >/dev/null 2>&1; then brew install --cask chromium; fi; \
	  command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	    echo "could not install chromium: the Dagster UI test skips (fails with CI=true)"; \
	}

demo: install
	$(RUN) sequence-platform demo --port $(PORT)

lint: install
	$(RUN) ruff check .
	$(RUN) ruff format --check .

typecheck: install
	$(RUN) mypy

unit: install wrk chromium
	$(RUN) pytest -q

test: lint typecheck unit

# Batch vs. a plain Polars script, daily cost by lookback, serving vs. the HTTP floor, and
# freshness (needs Java 17); results in bench/results/. BENCH_ARGS: see run_all.py --help.
bench: install wrk
	$(RUN) python benchmarks/run_all.py $(BENCH_ARGS)

validate: install
	$(RUN) sequence-platform validate

# dg dev loads the code location [tool.dg] in pyproject.toml names (workspace.yaml's, for
# `dagster dev -w workspace.yaml`), on the instance in DAGSTER_HOME.
ui: install
	$(RUN) dg dev

serve: install
	$(RUN) sequence-platform serve --port $(PORT)

kafka: install
	$(RUN) python -m sequence_platform.ingest.kafka_broker

clean:
	rm -rf .sequence_platform .dagster_home .cache/kafka
