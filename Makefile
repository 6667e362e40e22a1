# teeflow — the two entry points of the README.
#   make demo   installs teeflow + PyTorch in .venv and runs the main job (`teeflow demo`:
#               confidential federated learning on the emulated TEE, offline)
#   make test   installs teeflow + PyTorch + dev tools in .venv and runs lint, type check and
#               the whole test suite (the FL end-to-end tests and the demo need PyTorch)
# PIP_ARGS: extra pip options (e.g. an extra index that serves the CPU-only torch wheel on
# machines where pip would otherwise pick the CUDA build).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=
PIP_ARGS ?=
DEMO_ARGS ?=

.PHONY: demo test lint typecheck unit venv install-dev bench docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(PIP_ARGS) -e ".[torch]"
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(PIP_ARGS) -e ".[dev,torch]"
	touch $@ $(VENV)/.installed

venv: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(BIN)/teeflow demo $(DEMO_ARGS)

lint: install-dev
	$(BIN)/ruff check src tests bench
	$(BIN)/lint-imports

typecheck: install-dev
	$(BIN)/mypy

unit: install-dev
	$(BIN)/python -m pytest -q -n 2 $(PYTEST_ARGS)

test: lint typecheck unit

bench: install-dev
	$(BIN)/python bench/sealing.py
	$(BIN)/python bench/quote_verify.py

docs: install-dev
	$(BIN)/typer teeflow.cli.main utils docs --name teeflow --output docs/cli.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist src/*.egg-info
