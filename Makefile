# The two commands a newcomer needs:  `make train`  and  `make test`.
# Each creates .venv and installs distracer into it on first use; later runs reuse it.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
ALGO    ?= auto
PRESET  ?= auto
# A stopped run continues from its newest checkpoint when `make train` runs again.
RESUME  ?= auto
ARGS    ?=

.PHONY: train test test-slow lint bench setup

setup: $(STAMP)

# torch is installed first on its own so pip takes the pinned CPU/CUDA wheel it finds
# rather than resolving an open range to a multi-GB build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/distracer train --algo $(ALGO) --preset $(PRESET) --resume $(RESUME) $(ARGS)

test: $(STAMP)
	$(BIN)/ruff check distracer tests benchmarks
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q $(ARGS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
