# The README's commands. Everything is installed into .venv from the lock (requirements/*.txt,
# every package pinned with its hashes; see docs/dependencies.md): the demo and `run` need only
# the runtime lock; lint, types, tests and the benchmark add the test lock, a superset of it.
# Each has its own stamp, so `make demo` never waits for the test toolchain.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
RUNTIME_LOCK  := requirements/runtime.txt
TEST_LOCK     := requirements/test.txt
RUNTIME_STAMP := $(VENV)/.runtime-stamp
TEST_STAMP    := $(VENV)/.test-stamp
# The lock's compiler, for maintainers only (`make lock`, `make upgrade-check`): installs never
# need it. Kept in its own folder so that .venv holds exactly the lock.
UV_VERSION := 0.13.8
TOOLS      := .tools
UV         := $(TOOLS)/bin/uv
# One universal resolution for every supported Python (3.11 and newer), with each file's hashes.
COMPILE    := $(UV) pip compile --quiet --universal --python-version 3.11 --generate-hashes \
	--no-header --annotation-style line
UPGRADE_VENV := .venv-upgrade
SDK_VERSION  := 0.9.54
SDK_DIR      := $(TOOLS)/node
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install demo run test tools lint typecheck unit bench bench-quick bench-fleet lock \
	upgrade-check clean

# pip installs the lock as it is (--require-hashes: a package missing from the lock, or a file whose
# hash differs, stops the install), then the bridge itself without resolving anything. No
# byte-compiling of every installed file: Python compiles what it imports, when it first does
# (about a tenth off a fresh install; the Dockerfile compiles, for a read-only image).
$(RUNTIME_STAMP): pyproject.toml $(RUNTIME_LOCK)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else \
		"the bridge needs Python 3.11 or newer; this is " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	@echo "installing the runtime from the lock $(RUNTIME_LOCK) (pinned, hashes required)"
	$(BIN)/python -m pip install --quiet --no-compile --require-hashes -r $(RUNTIME_LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

$(TEST_STAMP): $(RUNTIME_STAMP) $(TEST_LOCK)
	@echo "installing the test tools from the lock $(TEST_LOCK) (pinned, hashes required)"
	$(BIN)/python -m pip install --quiet --no-compile --require-hashes -r $(TEST_LOCK)
	touch $@

install: $(TEST_STAMP) ## create .venv and install the bridge with its test tools

demo: $(RUNTIME_STAMP) ## both simulators, the whole bridge, live changes and a summary (exit 0 = in step)
	$(BIN)/sm8cd demo

run: $(RUNTIME_STAMP) ## the bridge for real: settings from the environment or .env
	$(BIN)/sm8cd run

# promtool (from Debian's prometheus package) checks and unit-tests deploy/prometheus/alerts.yml;
# redis-sentinel (Debian's redis-sentinel package) runs the three sentinels of the failover tests
# (tests/sentinel.py); chromium and chromedriver (Debian's chromium and chromium-driver) run the
# console's browser test (tests/e2e/test_console_browser.py). Each is installed here when missing;
# without apt-get (or root) it says how, and the tests that need it skip locally and fail in CI.
# $(call apt_tool,COMMAND,PACKAGES,WHAT IT IS FOR)
define apt_tool
	@if command -v $(1) >/dev/null 2>&1; then \
		echo "$(1): $$(command -v $(1))"; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
		echo "$(1) not found and apt-get is not available: install Debian/Ubuntu's '$(2)'" \
			"(or the upstream release) to run $(3)"; \
	elif [ "$$(id -u)" != 0 ]; then \
		echo "$(1) not found: run 'sudo apt-get update &&" \
			"sudo apt-get install -y --no-install-recommends $(2)' to run $(3)"; \
	else \
		echo "$(1) not found: installing Debian's $(2)"; \
		apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			$(2) >/dev/null && \
		echo "$(1): $$(command -v $(1))"; \
	fi
endef

tools: ## promtool, redis-sentinel, chromium (apt-get when missing) and the ServiceM8 SDK (npm)
	$(call apt_tool,promtool,prometheus,the alert tests)
	$(call apt_tool,redis-sentinel,redis-sentinel,the failover tests)
	$(call apt_tool,chromedriver,chromium chromium-driver,the console's browser test)

	@# ServiceM8's own TypeScript SDK (npm servicem8, generated from the official spec, validating
	@# every answer) for the simulator's conformance check; skipped by that test without node.
	@if [ -d $(SDK_DIR)/node_modules/servicem8 ]; then \
		echo "servicem8 SDK: $(SDK_DIR)"; \
	elif command -v npm >/dev/null 2>&1; then \
		echo "installing ServiceM8's TypeScript SDK servicem8@$(SDK_VERSION) into $(SDK_DIR)"; \
		npm install --silent --no-audit --no-fund --prefix $(SDK_DIR) \
			servicem8@$(SDK_VERSION) >/dev/null; \
	else \
		echo "npm not found: the ServiceM8 SDK conformance check will be skipped"; \
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

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet uv==$(UV_VERSION)

# Re-resolve to the newest versions pyproject.toml's ranges allow, then `make test` before
# committing the new lock. The test lock is constrained by the runtime lock, so the two agree.
lock: $(UV) ## re-resolve requirements/*.txt to the newest versions the ranges allow
	$(COMPILE) --upgrade pyproject.toml requirements/build.in -o $(RUNTIME_LOCK)
	$(COMPILE) --upgrade pyproject.toml requirements/build.in --extra test \
		-c $(RUNTIME_LOCK) -o $(TEST_LOCK)
	@echo "lock written: $(RUNTIME_LOCK), $(TEST_LOCK); run 'make test' before committing it"

# The newest versions the ranges allow, in a scratch environment, against lint, types and the
# suite (not the benchmark); the lock is left as it is. Prints what differs from the lock first.
upgrade-check: $(UV) ## lint, types and the suite on the newest allowed versions (lock untouched)
	rm -rf $(UPGRADE_VENV)
	$(PYTHON) -m venv $(UPGRADE_VENV)
	$(COMPILE) --upgrade pyproject.toml requirements/build.in --extra test \
		-o $(UPGRADE_VENV)/requirements.txt
	@$(PYTHON) requirements/diff.py $(TEST_LOCK) $(UPGRADE_VENV)/requirements.txt
	$(UPGRADE_VENV)/bin/python -m pip install --quiet --require-hashes \
		-r $(UPGRADE_VENV)/requirements.txt
	$(UPGRADE_VENV)/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(UPGRADE_VENV)/bin/ruff check .
	$(UPGRADE_VENV)/bin/ruff format --check .
	$(UPGRADE_VENV)/bin/mypy bridge mappings tasks bench
	$(UPGRADE_VENV)/bin/pytest
	@echo "upgrade-check passed: 'make lock' takes these versions"

clean:
	rm -rf $(VENV) $(TOOLS) $(UPGRADE_VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
