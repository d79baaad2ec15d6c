# `make demo` and `make test` set everything up on a fresh machine (a .venv in this folder).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.nucleisam-installed
# The CPU build of torch 2.13.0 is on these machines' disk; GPU users install their own torch first.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test lint bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/nucleisam demo

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/lint-imports

test: lint
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/metrics.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
