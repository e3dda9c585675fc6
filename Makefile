# fedmatch: every target installs what it needs first.
#   make demo   install, then a real `flwr run` simulation on the embedded digits + report
#   make test   install, then the test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin

# Flower looks up flower-superlink on PATH, and the background SuperLink it starts
# keeps this environment: runtime `uv sync` must be off before it starts.
export PATH := $(BIN):$(PATH)
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
# Opt in to Ray's future behaviour now; silences a FutureWarning in every run's log.
export RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO := 0

# Demo knobs (override on the command line, e.g. `make demo ROUNDS=10 CPUS_PER_CLIENT=2`).
NUM_CLIENTS ?= 5
CPUS_PER_CLIENT ?= 1
GPUS_PER_CLIENT ?= 0
ROUNDS ?= 5
STRATEGY ?= fedavg
RUNS_DIR ?= $(CURDIR)/runs
# Expanded once, so `flwr run` and `fedmatch show` see the same name.
ifndef RUN_NAME
RUN_NAME := demo-$(STRATEGY)-$(shell date +%Y%m%d-%H%M%S)
endif
RUN_CONFIG ?=

.PHONY: install demo bench deploy-local test lint stop-superlink clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e ".[dev]"
	touch $@

# `fedmatch run`: `flwr run --stream` that validates first, exits non-zero when the run
# failed, and whose Ctrl-C stops the run (it prints the command that resumes it).
demo: install
	$(BIN)/fedmatch run . \
	  --run-config "strategy='$(STRATEGY)' num-server-rounds=$(ROUNDS) runs-dir='$(RUNS_DIR)' run-name='$(RUN_NAME)' $(RUN_CONFIG)" \
	  --federation-config "num-supernodes=$(NUM_CLIENTS) client-resources-num-cpus=$(CPUS_PER_CLIENT) client-resources-num-gpus=$(GPUS_PER_CLIENT)"
	$(BIN)/fedmatch show "$(RUNS_DIR)/$(RUN_NAME)"
	$(BIN)/fedmatch report "$(RUNS_DIR)/$(RUN_NAME)" --out "$(RUNS_DIR)/$(RUN_NAME)/report"

# A benchmark grid (README "Benchmarks"): resumes when re-run, ends with a report.
SUITE ?= benchmarks/suites/digits-quick.toml
bench: install
	$(BIN)/fedmatch bench $(SUITE)

# The same app on Flower's deployment engine: a SuperLink and one SuperNode process per
# client on this machine, over TLS with SuperNode authentication (docs/deployment.md).
# DEPLOY_FLAGS=--insecure drops both (a warning says what that admits).
DEPLOY_FLAGS ?=
deploy-local: install
	$(BIN)/fedmatch deploy-local --nodes $(NUM_CLIENTS) $(DEPLOY_FLAGS) \
	  --run-config "strategy='$(STRATEGY)' num-server-rounds=$(ROUNDS) runs-dir='$(RUNS_DIR)' run-name='$(RUN_NAME)' $(RUN_CONFIG)"
	$(BIN)/fedmatch show "$(RUNS_DIR)/$(RUN_NAME)"

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q --durations=15

lint: install
	$(BIN)/ruff check .

stop-superlink:
	$(BIN)/fedmatch stop-superlink

clean:
	rm -rf runs .pytest_cache .ruff_cache
