# Two commands from a fresh clone: `make book` and `make test`.
# Both create .venv and install the pinned environment on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test unit clean

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

## make test: every check (unit tests for now)
test: unit

## make unit: the library's unit tests
unit: $(STAMP)
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf _build
