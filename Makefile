# mnist-lab: `make help` lists the targets. Every target sets up .venv by itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= experiments/baseline.yaml
SPACE ?= experiments/sweep.yaml
TRIALS ?=
WORKERS ?=
SEED ?=
ENGINE ?= optuna
STUDY ?=
TOP ?= 3
SEEDS ?= 3
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup train sweep report confirm test test-random test-all mutation bench ui dashboard clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  variables: CONFIG=$(CONFIG) SPACE=$(SPACE) TRIALS=N WORKERS=N (default: the space's) ENGINE=$(ENGINE) ARGS='key=value ...'"

setup: $(VENV)/.installed ## create .venv with the package and its test dependencies (idempotent)

# Quiet set-up: setuptools' "Editable installation" notice is advice for package authors, and
# this machine's pip config names index folders that do not exist (a warning per package).
# Every other warning and error still shows; a failed install still fails.
QUIET_PIP := PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip install --quiet
NOT_NEWS := is ignored: it is neither a file nor a directory

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "setting up $(VENV) (pip install -e '.[test]'; a few minutes on a fresh clone)"
	@set -o pipefail; $(QUIET_PIP) --upgrade pip 2>&1 | { grep -v "$(NOT_NEWS)" || true; }
	@set -o pipefail; $(QUIET_PIP) -e ".[test]" 2>&1 | { grep -v "$(NOT_NEWS)" || true; }
	@touch $@

train: setup ## train CONFIG (default: the baseline) and track it in MLflow
	$(BIN)/mnist-lab train $(CONFIG) $(ARGS)

sweep: setup ## run (or resume) the study SPACE; TRIALS=N WORKERS=N ENGINE=optuna|keras-tuner SEED=N (the sampler's)
	$(BIN)/mnist-lab sweep $(SPACE) $(if $(WORKERS),--workers $(WORKERS)) --engine $(ENGINE) $(if $(TRIALS),--n-trials $(TRIALS)) $(if $(SEED),--seed $(SEED)) $(ARGS)

report: setup ## write reports/<study>/index.html for STUDY (default: the latest study)
	$(BIN)/mnist-lab report $(if $(STUDY),--study $(STUDY)) $(ARGS)

confirm: setup ## retrain the TOP configurations of STUDY to SEEDS seeds each (validation), each tested once
	$(BIN)/mnist-lab confirm $(if $(STUDY),--study $(STUDY)) --top $(TOP) --seeds $(SEEDS) $(ARGS)

test: setup ## the test suite without the slow tests (and the import contracts), on 2 pytest workers
	$(BIN)/python -m pytest -m "not slow" -n 2 --dist loadgroup -p no:randomly $(ARGS)

test-random: setup ## the same suite in a random order (pytest-randomly prints its seed; ARGS=--randomly-seed=N repeats an order)
	$(BIN)/python -m pytest -m "not slow" -n 2 --dist loadgroup $(ARGS)

test-all: setup ## every test, the slow ones too
	$(BIN)/python -m pytest -p no:randomly $(ARGS)

mutation: setup ## mutmut over the modules that decide verdicts (pyproject's [tool.mutmut]); prints each one's score and its survivors
	rm -rf mutants
	# mutmut runs the tests from mutants/, one folder deeper, where conftest's ../shared default does not reach.
	MNIST_LAB_DATA="$${MNIST_LAB_DATA:-$(CURDIR)/../shared/data/mnist}" $(BIN)/mutmut run --max-children 2 > /dev/null
	$(BIN)/python tests/mutation_score.py

bench: setup ## benchmarks/bench.py: the lab against plain Keras, Optuna and KerasTuner, side by side (~41 min; nothing else running)
	$(BIN)/python benchmarks/bench.py $(ARGS)

ui: setup ## the MLflow UI on http://127.0.0.1:5000 over MLFLOW_TRACKING_URI or mlruns/, with a link to the latest study
	$(BIN)/mnist-lab ui $(ARGS)

dashboard: setup ## Optuna Dashboard on http://127.0.0.1:8080 over mlruns/optuna.db (installs the optional extra)
	@$(BIN)/python -c "import optuna_dashboard" 2>/dev/null || { set -o pipefail; $(QUIET_PIP) -e ".[dashboard]" 2>&1 | { grep -v "$(NOT_NEWS)" || true; }; }
	$(BIN)/mnist-lab dashboard $(ARGS)

clean: ## remove .venv (not mlruns/ or reports/: they hold your results)
	rm -rf $(VENV) *.egg-info
