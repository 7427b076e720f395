# make run FOLDER=path/to/photos   set everything up, classify the folder end to end, print a summary
#                                  (and the web page's address and token while it runs; SERVE=1: then
#                                  keep the page and the workers up for review, until Ctrl-C)
# make test                        run the test suite (starts local PostgreSQL and Redis if they are stopped,
#                                  installs Chromium for the browser test if it is missing)
# make test-docker                 build the image offline and run the compose stack on a folder (minutes)
# make lint                        ruff and mypy
# make bench                       the benchmarks of docs/performance.md (about 80 minutes)
# make reference-model             retrain the shipped reference model in its three stages (docs/model.md#reproduce)
# make candidate-model             train (or go on training) the second edition's candidate; candidate-pack
#                                  packs it into checkpoints/ to go on elsewhere (docs/model.md)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
FOLDER ?= ../shared/data/catsdogs/test

.PHONY: setup run test test-fast test-docker lint bench services reference-model candidate-model candidate-pack

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

# The reference model's recipe (docs/model.md#reproduce): three stages, each starting from
# the previous stage's weights, seed 42; about 2.3 hours of epochs on two cores. Each stage
# is a file target, so an interrupted run starts again at the stage it was in
# (`trainer fit --resume` continues inside a stage). Then the float16 copy that ships.
DATA            ?= ../shared/data/catsdogs
REFERENCE_STORE ?= var/reference-build
REFERENCE_OUT   ?= models/reference
STAGE_EPOCHS    ?= 20 30 24
STAGE_ARGS      ?=
stage_epochs = $(word $(1),$(STAGE_EPOCHS))
fit_stage = $(BIN)/trainer fit --data $(DATA) --accelerator cpu --seed 42 --model-store $(REFERENCE_STORE) $(STAGE_ARGS)

reference-model: $(REFERENCE_STORE)/v3/meta.json
	MODEL_STORE=$(REFERENCE_STORE) $(BIN)/catsdogs export-model v3 $(REFERENCE_OUT)

$(REFERENCE_STORE)/v1/meta.json: | setup
	$(call fit_stage) --max-epochs $(call stage_epochs,1)

$(REFERENCE_STORE)/v2/meta.json: $(REFERENCE_STORE)/v1/meta.json
	$(call fit_stage) --max-epochs $(call stage_epochs,2) --lr 1e-3 --init-from $(REFERENCE_STORE)/v1

$(REFERENCE_STORE)/v3/meta.json: $(REFERENCE_STORE)/v2/meta.json
	$(call fit_stage) --max-epochs $(call stage_epochs,3) --lr 5e-4 --init-from $(REFERENCE_STORE)/v2

# The second edition's candidate: one 60-epoch run with the medium stem, longer than a machine's
# stay on two cores, so it goes on from wherever it stopped: this machine's last.ckpt, else the
# packed checkpoint that `make candidate-pack` wrote and was committed. CANDIDATE_ARGS adds options
# that may change between sessions (--precision bf16-mixed on CPUs with native bf16 or on a GPU).
CANDIDATE_RUNS ?= var/runs-candidate
CANDIDATE_PACK ?= checkpoints/candidate-medium.packed.ckpt
CANDIDATE_ARGS ?=
candidate_fit = $(BIN)/trainer fit --data $(DATA) --accelerator cpu --devices 1 --seed 42 --max-epochs 60 \
	--stem medium --augment trivial --ema 0.998 --mixup 0.2 --runs-dir $(CANDIDATE_RUNS) \
	--model-store var/models-candidate $(CANDIDATE_ARGS)
candidate_last = $(lastword $(sort $(wildcard $(CANDIDATE_RUNS)/catsdogs/version_*/checkpoints/last.ckpt)))

candidate-model: setup
	$(candidate_fit) $(if $(candidate_last),--resume,$(if $(wildcard $(CANDIDATE_PACK)),--resume-from $(CANDIDATE_PACK)))

candidate-pack:
	$(BIN)/trainer pack $(or $(candidate_last),$(error no last.ckpt under $(CANDIDATE_RUNS))) $(CANDIDATE_PACK)
