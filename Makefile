# Two commands matter: `make test` (what CI runs) and `make figures` (regenerates every figure).
# Every target installs the project first (`make setup`, idempotent). `make help` lists this.
# `make test-fast`: lint + pytest without the tests marked slow or notebook (tests/README.md).
# `make verify`: retrain a fixed sample of committed runs (a few minutes); how far each new
# history is from the committed one, and whether any claim's verdict would change.
#
# Variables:
#   CIFAR10=/path/to/cifar10-jpeg.tar.gz  offline CIFAR-10 (ImageFolder tree, .tar.gz of one, or
#                                          cifar-10-batches-py), relative to where make runs;
#                                          exported as CIFAR10_PATH
#   PRESET=cpu                             smoke | cpu | paper (make figures)
#   ONLY=fig1,figA-svag-cosine             make figures: only these figure ids (default: all)
#   STORE=/tmp/fresh-store                 make figures: results store (runs/, theory/) instead of
#                                          data/; an empty folder retrains everything, the
#                                          decoded data stay in data/
#   OUT=build/mine                         make figures: write figures/ and notebooks/ there
#                                          (default: the committed ones for PRESET=cpu from the
#                                          default store, else build/<preset>/)
#   ALLOW_LONG=1                           make figures: go ahead when the estimated training
#                                          time on this machine exceeds 3 h
#   EXECUTOR=slurm                         make figures: where missing runs train: pool (default,
#                                          local worker processes) | local (submitit's local
#                                          executor; waits) | slurm (one job array; returns at
#                                          once with exit status 3 and the pending runs; run
#                                          make figures again to plot when the jobs are done)
#   PARTITION=gpu                          EXECUTOR=slurm: partition (default: the cluster's)
#   GPUS_PER_JOB=1                         GPUs per job (slurm: one per rank; local: 1 with CUDA)
#   TIME_LIMIT=24:00:00                    per job (Slurm's forms: M, M:S, H:M:S, D-H:M:S;
#                                          default 1440 min); a
#                                          longer run is requeued from its checkpoint
#   ARRAY_PARALLELISM=64                   jobs at once (slurm: 64; local: one per core)
#   NPROC_PER_RUN=1                        DDP ranks per run (one GPU each on Slurm)
#   PYTHON=python3                         interpreter used to create .venv

PYTHON ?= python3
PRESET ?= cpu
CIFAR10 ?= $(CIFAR10_PATH)
STORE ?=
OUT ?=
ALLOW_LONG ?=
EXECUTOR ?=
PARTITION ?=
GPUS_PER_JOB ?=
TIME_LIMIT ?=
ARRAY_PARALLELISM ?=
NPROC_PER_RUN ?=
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export CIFAR10_PATH := $(if $(CIFAR10),$(abspath $(CIFAR10)))
export PYTHONHASHSEED := 0

NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb notebooks/appendix/*.ipynb))

.PHONY: help setup test test-fast lint pytest nbval figures verify bench clean

help:
	@sed -n '/^# Two commands/,/^$$/p' Makefile | sed 's/^# \{0,1\}//'

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

lint: setup
	$(BIN)/ruff check paperlib tests scripts benchmarks

pytest: setup
	$(BIN)/python -m pytest tests

# nbval re-executes the committed notebooks against the committed result files; with
# PAPERLIB_NO_TRAIN=1 a missing or stale result fails fast instead of training (always the
# committed store, whatever PAPERLIB_STORE says).
nbval: setup
ifneq ($(NOTEBOOKS),)
	PAPERLIB_STORE= PAPERLIB_NO_TRAIN=1 $(BIN)/python -m pytest --nbval $(NOTEBOOKS)
endif

test: lint pytest nbval

test-fast: lint
	$(BIN)/python -m pytest tests -m "not slow and not notebook"

figures: setup
	$(BIN)/python -m paperlib figures --preset $(PRESET) $(if $(ONLY),--only $(ONLY)) \
		$(if $(STORE),--store $(STORE)) $(if $(OUT),--out $(OUT)) \
		$(if $(filter-out 0,$(ALLOW_LONG)),--allow-long) \
		$(if $(EXECUTOR),--executor $(EXECUTOR)) $(if $(PARTITION),--partition $(PARTITION)) \
		$(if $(GPUS_PER_JOB),--gpus-per-job $(GPUS_PER_JOB)) \
		$(if $(TIME_LIMIT),--time-limit $(TIME_LIMIT)) \
		$(if $(ARRAY_PARALLELISM),--array-parallelism $(ARRAY_PARALLELISM)) \
		$(if $(NPROC_PER_RUN),--nproc-per-run $(NPROC_PER_RUN))

verify: setup
	$(BIN)/python -m paperlib verify

bench: setup
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
