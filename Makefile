# policytune: `make run` sets up and runs the default pipeline; `make test` sets up and tests.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
# Offline by default: no hub downloads, no telemetry.
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export DVC_NO_ANALYTICS := 1
export DEEPEVAL_TELEMETRY_OPT_OUT := YES
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false
export PYTHONUNBUFFERED := 1

.PHONY: setup setup-run run repro test test-fast clean-venv

setup:            ## install what the tests need (idempotent, seconds when done)
	bash scripts/setup.sh test

setup-run:        ## install what the default run needs (idempotent)
	bash scripts/setup.sh run

run: setup-run    ## set up, then run the whole default pipeline offline
	$(BIN)/dvc repro

repro:
	$(BIN)/dvc repro

test: setup       ## set up, then run every test (CPU, offline)
	$(BIN)/python -m pytest -q

test-fast: setup  ## skip the slow end-to-end tests
	$(BIN)/python -m pytest -q -m "not slow"
