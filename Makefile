# The two commands: `make demo` and `make test`. Both set up what they need on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Debian packages the tests and the demo drive for real.
DEBIAN_PACKAGES := postgresql postgresql-client

.PHONY: demo test lint bench setup debian-packages vectors clean

demo: setup
	$(BIN)/tapegate demo

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: setup
	bash scripts/ensure-debian-packages.sh pgbouncer
	$(BIN)/python bench/bench_tape.py
	$(BIN)/python bench/bench_gateway.py

setup: $(VENV)/.installed debian-packages

debian-packages:
	@bash scripts/ensure-debian-packages.sh $(DEBIAN_PACKAGES)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || { bash scripts/ensure-debian-packages.sh python3-venv \
		&& rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,aws]'
	touch $@

# Only when the format version changes: see tests/vectors/generate.py.
vectors: setup
	$(BIN)/python -m tests.vectors.generate

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis *.egg-info
