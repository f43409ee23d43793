# jaxvalues developer targets. `make test` is what CI runs (.ci/run).
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-fast demo bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Full suite: unit, parity, distributed and the real-model tests (marker `real`).
test: install
	$(BIN)/python -m pytest -q tests

# Everything except the real-model and Ray tests.
test-fast: install
	$(BIN)/python -m pytest -q -m "not real and not ray" tests

demo: install
	$(BIN)/jaxvalues run --config configs/experiments/demo.yaml

bench: install
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
