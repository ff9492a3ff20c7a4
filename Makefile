# The two commands of the README quickstart: `make serve` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install serve test lint typecheck unit bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev,transformer]"
	touch $(STAMP)

install: $(STAMP)

## Install, train the default model on first start (about 3 minutes), serve on 127.0.0.1:8000.
serve: install
	$(BIN)/triage serve

## Install, then lint, type-check and run the whole test suite.
test: install lint typecheck unit

lint: install
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy triage tests

unit: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python bench/dev_metrics.py
	$(BIN)/python bench/sentiment_shared.py
	$(BIN)/python bench/batch_throughput.py
	$(BIN)/python bench/api_latency.py

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
