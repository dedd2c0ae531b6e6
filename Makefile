# Two entry points, both idempotent on a fresh machine: `make pipeline` and `make test`.
# Install order matters: torch first (pinned; an unpinned torch pulls GBs of CUDA packages),
# then torch-scatter built against it without build isolation (otherwise its build
# environment downloads another torch), then the project itself.

PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.pvkd-installed
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install pipeline test lint bench clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip setuptools wheel
	$(BIN)/python -m pip install torch==$(TORCH_VERSION) numpy
	MAX_JOBS=2 $(BIN)/python -m pip install --no-build-isolation "torch-scatter>=2.1.2"
	$(BIN)/python -m pip install -e ".[dev]"
	touch $@

pipeline: install
	dvc repro

test: install
	pytest -q

lint: install
	ruff check .

bench: install
	python bench/preprocess_throughput.py

clean-venv:
	rm -rf $(VENV)
