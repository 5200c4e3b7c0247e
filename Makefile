# The two commands of the README:
#   make demo   set up (a virtualenv in .venv) and run `dnnlens demo` offline
#   make test   set up (plus test tools and Debian test data) and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test setup setup-test test-data benchmarks notebook lint

demo: setup
	$(BIN)/dnnlens demo

# Lint first: a lint, format or type error fails `make test` (and so CI) before any test runs.
test: setup-test test-data lint
	$(BIN)/python -m pytest -q

setup: $(VENV)/.installed-base
setup-test: $(VENV)/.installed-test

$(VENV)/.installed-base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed-base
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# Full-size real data (Fashion-MNIST) and a headless browser for the report test, from Debian.
test-data:
	./scripts/install-test-deps.sh

# The example notebook is stored with its outputs, so a reader on a code host sees the answers;
# this re-runs it top to bottom (tests/test_notebook.py fails when the stored outputs are stale).
notebook: setup-test
	$(BIN)/python scripts/execute_notebook.py examples/analyzing-dnns.ipynb

# The lint and type gate: ruff (lint + format check) over the package, tests, scripts and
# benchmarks; mypy over the package (pyproject's [tool.mypy] files).
lint: setup-test
	$(BIN)/ruff check dnnlens tests scripts benchmarks
	$(BIN)/ruff format --check dnnlens tests scripts benchmarks
	$(BIN)/mypy

benchmarks: setup-test test-data
	$(BIN)/python benchmarks/engine.py
	$(BIN)/python benchmarks/analysis.py
	$(BIN)/python benchmarks/roofline.py
