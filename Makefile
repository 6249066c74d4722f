# policytune: `make run` sets up and runs the default pipeline; `make test` sets up and tests.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
# Stage commands in dvc.yaml say `python -m stages.<name>`: that must be the venv's python.
export PATH := $(CURDIR)/$(BIN):$(PATH)
# Offline by default: no hub downloads, no telemetry.
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export DVC_NO_ANALYTICS := 1
export DEEPEVAL_TELEMETRY_OPT_OUT := YES
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false
export PYTHONUNBUFFERED := 1

.PHONY: setup setup-run run repro test test-fast remote-up remote-down remote review bench bench-train

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

# --- sharing: a local S3 server (SeaweedFS on 127.0.0.1) as the DVC remote -----------------
S3_DIR ?= .s3local
S3_PORT ?= 8333
S3_REMOTE ?= storage
remote-up: setup  ## start SeaweedFS S3 on 127.0.0.1:$(S3_PORT), data in $(S3_DIR), and point DVC at it
	$(BIN)/python -m policytune.tools.s3local start --dir $(S3_DIR) --port $(S3_PORT)
	$(BIN)/python -m policytune.tools.s3local remote --dir $(S3_DIR) --port $(S3_PORT) --name $(S3_REMOTE)

remote-down:
	$(BIN)/python -m policytune.tools.s3local stop --dir $(S3_DIR)

# --- review: Markdown PR comment comparing this branch with BASE ------------------------------
BASE ?= main
review:
	$(BIN)/python -m policytune.tools.review --base $(BASE) --out review

# --- benchmarks -------------------------------------------------------------------------------
bench-train: setup-run
	$(BIN)/python -m bench.bench_train bench/out/train.json

bench: setup-run  ## every benchmark in one run -> metrics/bench.json
	$(BIN)/python -m bench.run_all --out metrics/bench.json
