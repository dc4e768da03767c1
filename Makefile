# Two commands from a fresh clone: `make book` and `make test`.
# Both create .venv and install the pinned environment on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SHELL  := /bin/bash

# One torch thread everywhere: floating-point reductions then do not depend on the core count,
# so re-executed outputs match the committed ones (see icl_lib.seed_everything).
ICL_LIB_THREADS ?= 1
export ICL_LIB_THREADS

NOTEBOOKS := $(sort $(wildcard book/*.ipynb))
SANITIZE  := book/sanitize.cfg

.PHONY: venv test unit nbval book notebooks timings clean

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

## make test: every check: unit tests, notebook regression tests, then a book build from scratch
test: $(STAMP)
	$(MAKE) unit
	$(MAKE) nbval
	$(MAKE) clean
	$(MAKE) book

## make unit: the library's unit tests (tests/ only: notebooks are not collected here)
unit: $(STAMP)
	$(BIN)/python -m pytest -q tests

## make nbval: re-execute every chapter and compare its outputs with the committed ones (strict)
nbval: $(STAMP)
	$(BIN)/python -m pytest -q --nbval book/ --nbval-sanitize-with $(SANITIZE)

## make book: execute every chapter and build the HTML into _build/html; any warning fails
book: $(STAMP)
	$(BIN)/jupyter-book build . -W -n --keep-going

## make notebooks: re-execute every chapter in place, top to bottom, each in a clean kernel
notebooks: $(STAMP)
	$(BIN)/python tests/execute_notebooks.py $(NOTEBOOKS)

## make timings: how long each chapter takes to execute (the notebooks are left unchanged)
timings: $(STAMP)
	$(BIN)/python tests/execute_notebooks.py --time $(NOTEBOOKS)

## make clean: remove the built book
clean:
	rm -rf _build
