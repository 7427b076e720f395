# make run FOLDER=path/to/photos   set everything up, classify the folder end to end, print a summary
#                                  (and the web page's address and token while it runs; SERVE=1: then
#                                  keep the page and the workers up for review, until Ctrl-C)
# make test                        run the test suite (starts local PostgreSQL and Redis if they are stopped,
#                                  installs Chromium for the browser test if it is missing)
# make test-docker                 build the image offline and run the compose stack on a folder (minutes)
# make lint                        ruff and mypy
# make bench                       the benchmarks of docs/performance.md (about 80 minutes)
# make reference-model             retrain the shipped reference model in its three stages (docs/model.md#reproduce)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
FOLDER ?= ../shared/data/catsdogs/test

.PHONY: setup run test test-fast test-docker lint bench services reference-model

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
