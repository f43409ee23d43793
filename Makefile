# jaxvalues developer targets. `make test` is what CI runs (.ci/run).
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The base install (`pip install -e .`: no torch, no test tools) is all `demo` needs.
BASE_STAMP := $(VENV)/.installed-base

.PHONY: install install-base test test-fast demo bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# `.[test]` includes the base install, so it satisfies the base stamp too.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP) $(BASE_STAMP)

$(BASE_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $(BASE_STAMP)

install: $(STAMP)

install-base: $(BASE_STAMP)

# Full suite: unit, parity, distributed and the real-model tests (marker `real`).
test: install
	$(BIN)/python -m pytest -q tests

# Everything except the real-model and Ray tests.
test-fast: install
	$(BIN)/python -m pytest -q -m "not real and not ray" tests

demo: install-base
	$(BIN)/jaxvalues run --config configs/experiments/demo.yaml

bench: install
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
