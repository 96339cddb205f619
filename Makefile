# rgsweep: `make help` lists the targets. Every target that runs code installs first (into .venv).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
RGSWEEP := $(BIN)/rgsweep
SWEEP ?= sweeps/demo.yaml
ARGS ?=
DATASET ?=
DATA_DIR ?=
HOST ?= 127.0.0.1
PORT ?= 5000
EXPERIMENT ?= demo
DATA_ARGS := $(if $(DATASET),--dataset $(DATASET)) $(if $(DATA_DIR),--data-dir $(DATA_DIR))

.DEFAULT_GOAL := help
.PHONY: help install test test-fast lint demo sweep sweep-label-noise sweep-pixels sweep-regularizers \
	sweep-architectures sweep-mnist tune tune-paper export report notebooks ui bench models clean

help: ## show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-22s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: $(STAMP) ## create .venv and install rgsweep (editable) with its dev extra

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(STAMP)

lint: install ## ruff over the code and tests
	$(BIN)/ruff check rgsweep tests benchmarks

test: install lint ## run the whole test suite (real Ray, MLflow, Optuna, torch on tiny data)
	$(BIN)/python -m pytest -q

test-fast: install ## the test suite without the slow end-to-end tests
	$(BIN)/python -m pytest -q -m "not slow"

models: install ## list the models with their parameter counts
	$(RGSWEEP) models --input-shape 3,28,28
