# The README's commands. Everything is installed into .venv from pyproject.toml.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo run test lint typecheck unit bench bench-quick clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the bridge with its test tools

demo: $(STAMP) ## both simulators, the whole bridge, live changes and a summary (exit 0 = in step)
	$(BIN)/bridge demo

run: $(STAMP) ## the bridge for real: settings from the environment or .env
	$(BIN)/bridge run

lint: $(STAMP) ## ruff
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP) ## mypy (strict on the pure parts: mappings/, wire models, translation, codec)
	$(BIN)/mypy bridge mappings tasks bench

test: lint typecheck ## the whole suite: lint, types, every test, the quick benchmark
	$(BIN)/pytest
	$(MAKE) bench-quick

bench-quick: $(STAMP) ## every benchmark at small size; fails if a figure misses its target
	$(BIN)/python -m bench --quick

bench: $(STAMP) ## the full benchmark (several minutes): table, bench/out/figures.json, plots
	$(BIN)/python -m bench

unit: $(STAMP) ## the fast, pure tests only
	$(BIN)/pytest tests/unit

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
