# The README's commands. Everything is installed into .venv from pyproject.toml: the demo and `run`
# need only the bridge and its runtime dependencies; lint, types, tests and the benchmark add the
# test extra. Each has its own stamp, so `make demo` never waits for the test toolchain.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
RUNTIME_STAMP := $(VENV)/.runtime-stamp
TEST_STAMP    := $(VENV)/.test-stamp

.PHONY: install demo run test tools lint typecheck unit bench bench-quick bench-fleet clean

$(RUNTIME_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(TEST_STAMP): $(RUNTIME_STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(TEST_STAMP) ## create .venv and install the bridge with its test tools

demo: $(RUNTIME_STAMP) ## both simulators, the whole bridge, live changes and a summary (exit 0 = in step)
	$(BIN)/bridge demo

run: $(RUNTIME_STAMP) ## the bridge for real: settings from the environment or .env
	$(BIN)/bridge run

# promtool (from Debian's prometheus package) checks and unit-tests deploy/prometheus/alerts.yml;
# redis-sentinel (Debian's redis-sentinel package) runs the three sentinels of the failover tests
# (tests/sentinel.py). Each is installed here when missing; without apt-get (or root) it says how,
# and the tests that need it skip locally and fail in CI.
tools: ## promtool and redis-sentinel for the alert and failover tests (apt-get when missing)
	@if command -v promtool >/dev/null 2>&1; then \
		echo "promtool: $$(command -v promtool)"; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
		echo "promtool not found and apt-get is not available: install Prometheus's promtool" \
			"(Debian/Ubuntu package 'prometheus', or a Prometheus release) to run the alert tests"; \
	elif [ "$$(id -u)" != 0 ]; then \
		echo "promtool not found: run 'sudo apt-get update &&" \
			"sudo apt-get install -y --no-install-recommends prometheus' to run the alert tests"; \
	else \
		echo "promtool not found: installing Debian's prometheus package"; \
		apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			prometheus >/dev/null && \
		echo "promtool: $$(command -v promtool)"; \
	fi
	@if command -v redis-sentinel >/dev/null 2>&1; then \
		echo "redis-sentinel: $$(command -v redis-sentinel)"; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
		echo "redis-sentinel not found and apt-get is not available: install Redis's" \
			"redis-sentinel (Debian/Ubuntu package 'redis-sentinel', or a Redis release)" \
			"to run the failover tests"; \
	elif [ "$$(id -u)" != 0 ]; then \
		echo "redis-sentinel not found: run 'sudo apt-get update &&" \
			"sudo apt-get install -y --no-install-recommends redis-sentinel' to run the" \
			"failover tests"; \
	else \
		echo "redis-sentinel not found: installing Debian's redis-sentinel package"; \
		apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			redis-sentinel >/dev/null && \
		echo "redis-sentinel: $$(command -v redis-sentinel)"; \
	fi

lint: $(TEST_STAMP) ## ruff
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(TEST_STAMP) ## mypy (strict on the pure parts: mappings/, wire models, translation, codec)
	$(BIN)/mypy bridge mappings tasks bench

test: tools lint typecheck ## the whole suite: promtool, lint, types, every test, the quick benchmark
	$(BIN)/pytest
	$(MAKE) bench-quick

bench-quick: $(TEST_STAMP) ## every benchmark at small size; fails if a figure misses its target
	$(BIN)/python -m bench --quick

bench: $(TEST_STAMP) ## the full benchmark (several minutes): table, bench/out/figures.json, plots
	$(BIN)/python -m bench

bench-fleet: $(TEST_STAMP) ## 1,000 connections in one deployment, then one noisy one (about 10 min)
	$(BIN)/python -m bench.fleet --json bench/out/fleet.json

unit: $(TEST_STAMP) ## the fast, pure tests only
	$(BIN)/pytest tests/unit

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
