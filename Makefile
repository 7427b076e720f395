# make run FOLDER=path/to/photos   set everything up, classify the folder end to end, print a summary
# make test                        run the test suite (starts local PostgreSQL and Redis if they are stopped)
# make lint                        ruff and mypy
# make bench                       the throughput benchmarks of docs/performance.md (about 30 minutes)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
FOLDER ?= ../shared/data/catsdogs/test

.PHONY: setup run test test-fast lint bench services

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

run: setup
	$(BIN)/catsdogs run $(FOLDER)

services:
	./scripts/ensure-services.sh

test: setup services
	$(BIN)/pytest

test-fast: setup services
	$(BIN)/pytest -m "not slow"

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
	$(BIN)/python -m bench.stems
