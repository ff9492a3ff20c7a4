# The two commands of the README quickstart: `make serve` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# The service needs only the base dependencies; tests and benchmarks need the extras too.
SERVICE_STAMP := $(VENV)/.installed-service
STAMP := $(VENV)/.installed

.PHONY: install serve test lint typecheck unit bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(SERVICE_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $(SERVICE_STAMP)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev,transformer]"
	touch $(SERVICE_STAMP) $(STAMP)

install: $(STAMP)

## Install the service, train the default model on first start (about 3 minutes), serve on
## 127.0.0.1:8000.
serve: $(SERVICE_STAMP)
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
