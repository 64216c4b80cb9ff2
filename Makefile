# The two commands: `make demo` and `make test`. Both set up what they need on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Debian packages the tests and the demo drive for real.
DEBIAN_PACKAGES := postgresql postgresql-client openssh-server openssh-client curl openssl

# jsii (under aws-cdk-lib) warns at every start that Node 20 is past its end of life; it works.
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20

.PHONY: demo test lint bench setup synth debian-packages vectors clean

demo: setup
	$(BIN)/tapegate demo

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: setup
	bash scripts/ensure-debian-packages.sh pgbouncer wrk nginx
	$(BIN)/python bench/bench_tape.py
	$(BIN)/python bench/bench_gateway.py
	$(BIN)/python bench/bench_ssh_http.py
	$(BIN)/python bench/bench_faults.py

setup: $(VENV)/.installed node_modules/.installed debian-packages

# The CDK app (app.py, cdk/): `npx cdk synth` needs no AWS credentials and no Docker.
synth: setup
	npx cdk synth --quiet

debian-packages:
	@bash scripts/ensure-debian-packages.sh $(DEBIAN_PACKAGES)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || { bash scripts/ensure-debian-packages.sh python3-venv \
		&& rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,aws,cdk]'
	touch $@

# The CDK CLI, pinned in package-lock.json.
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Only when the format version changes: see tests/vectors/generate.py.
vectors: setup
	$(BIN)/python -m tests.vectors.generate

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis *.egg-info node_modules cdk.out
