# make run FOLDER=path/to/photos   set everything up, classify the folder end to end, print a summary
#                                  (and the web page's address and token while it runs; SERVE=1: then
#                                  keep the page and the workers up for review, until Ctrl-C)
# make test                        run the test suite (starts local PostgreSQL and Redis if they are stopped,
#                                  installs Chromium for the browser test if it is missing)
# make test-docker                 build the image offline and run the compose stack on a folder (minutes)
# make lint                        ruff and mypy
# make bench                       the benchmarks of docs/performance.md (about 80 minutes)
# make reference-model             retrain the shipped reference model (docs/model.md#reproduce), going on
#                                  where it stopped; reference-pack packs it into checkpoints/ to go on elsewhere

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
FOLDER ?= ../shared/data/catsdogs/test

.PHONY: setup run test test-fast test-docker lint bench services reference-model reference-pack

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

run: setup
	$(BIN)/catsdogs run $(FOLDER) $(if $(SERVE),--serve)

services:
	./scripts/ensure-services.sh

test: setup services
	$(BIN)/pytest

test-fast: setup services
	$(BIN)/pytest -m "not slow and not docker"

test-docker: setup
	$(BIN)/pytest -m docker -s tests/deploy/test_docker.py

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

bench: setup services
	$(BIN)/python -m bench.decode
	$(BIN)/python -m bench.tta
	$(BIN)/python -m bench.precision
	$(BIN)/python -m bench.throughput --memory-job 20000
	$(BIN)/python -m bench.database
	$(BIN)/python -m bench.timeline
	$(BIN)/python -m bench.faults
	$(BIN)/python -m bench.stems
	$(BIN)/python -m bench.recovery
	$(BIN)/python -m bench.fleet
	$(BIN)/python -m bench.reuse
	$(BIN)/python -m bench.robustness

# The reference model's recipe (docs/model.md#reproduce): one 60-epoch run from scratch with the
# medium stem, seed 42; about 2.2 hours of epochs on two cores with AMX, 3.9 with AVX-512 BF16
# alone (both bf16-mixed), 5.5-7.5 hours in float32 elsewhere. It goes on from wherever it
# stopped: this machine's last.ckpt, else a packed checkpoint that `make reference-pack` wrote (to
# carry the run to another machine). Then the float16 copy that ships. REFERENCE_ARGS adds options
# (--accelerator gpu).
DATA            ?= ../shared/data/catsdogs
REFERENCE_STORE ?= var/reference-build
REFERENCE_RUNS  ?= var/reference-runs
REFERENCE_PACK  ?= checkpoints/reference.packed.ckpt
REFERENCE_OUT   ?= models/reference
REFERENCE_ARGS  ?=
REFERENCE_PRECISION ?= $(if $(shell grep -s -m1 -o -w -E 'amx_bf16|avx512_bf16' /proc/cpuinfo),bf16-mixed,32-true)
reference_fit = $(BIN)/trainer fit --data $(DATA) --accelerator cpu --devices 1 --seed 42 --max-epochs 60 \
	--stem medium --augment trivial --ema 0.998 --mixup 0.2 --precision $(REFERENCE_PRECISION) \
	--runs-dir $(REFERENCE_RUNS) --model-store $(REFERENCE_STORE) $(REFERENCE_ARGS)
reference_last = $(lastword $(sort $(wildcard $(REFERENCE_RUNS)/catsdogs/version_*/checkpoints/last.ckpt)))

reference-model: $(REFERENCE_STORE)/v1/meta.json
	MODEL_STORE=$(REFERENCE_STORE) $(BIN)/catsdogs export-model v1 $(REFERENCE_OUT)

$(REFERENCE_STORE)/v1/meta.json: | setup
	$(reference_fit) $(if $(reference_last),--resume,$(if $(wildcard $(REFERENCE_PACK)),--resume-from $(REFERENCE_PACK)))

reference-pack:
	$(BIN)/trainer pack $(or $(reference_last),$(error no last.ckpt under $(REFERENCE_RUNS))) $(REFERENCE_PACK)
