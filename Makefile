# The two set-up commands of the README: `make demo` and `make test`. Each creates .venv with what it
# needs on a machine that has only Python 3.11+ and pip. torch is installed first, pinned, when missing:
# `pip install torch==2.13.0` takes a local CPU wheel where one is provided and otherwise PyPI's build.
# Override with e.g. `make demo TORCH_SPEC="torch==2.5.1"` or PIP_EXTRA="--index-url <your mirror>".
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
PIP_EXTRA ?=

.PHONY: demo test test-fast lint bench-quick clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.torch: | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(PIP_EXTRA) "$(TORCH_SPEC)"
	touch $@

$(VENV)/.demo: pyproject.toml $(VENV)/.torch
	$(BIN)/pip install -q $(PIP_EXTRA) -e ".[train]"
	touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.torch
	$(BIN)/pip install -q $(PIP_EXTRA) -e ".[dev]"
	touch $@ $(VENV)/.demo

demo: $(VENV)/.demo
	$(BIN)/corpusforge demo

test: $(VENV)/.dev
	$(BIN)/python -m pytest -q

# Everything but the tests marked slow (browser, kill -9, DDP, the demo, the crawl proofs): about 2 minutes.
test-fast: $(VENV)/.dev
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(VENV)/.dev
	$(BIN)/ruff check corpusforge tests benchmarks
	$(BIN)/ruff format --check corpusforge tests benchmarks
	$(BIN)/mypy corpusforge

bench-quick: $(VENV)/.dev
	for b in benchmarks/[a-z]*.py; do $(BIN)/python $$b --quick || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
