# jima_jax: `make demo` (train + evaluate on the built-in phantom corpus), `make test`, `make bench`.
# Each target creates .venv on first use (Python >= 3.11 as $(PYTHON)) and installs what it needs.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= runs/demo
PYTEST_ARGS ?= -n 2
export JAX_COMPILATION_CACHE_DIR ?= $(CURDIR)/.cache/jax
export JIMA_DATA_DIR ?= $(CURDIR)/.cache/data
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: demo test bench clean-venv

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else \
	  "jima_jax needs Python >= 3.11, $(PYTHON) is " + sys.version.split()[0] + \
	  "; run e.g. make PYTHON=python3.11 ...")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-run: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

$(VENV)/.installed-test: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@ $(VENV)/.installed-run

demo: $(VENV)/.installed-run
	$(BIN)/python -m jima_jax.main --config configs/demo.py --workdir $(DEMO_DIR)
	$(BIN)/python -m jima_jax.main --config configs/demo.py --workdir $(DEMO_DIR) --mode eval

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(PYTEST_ARGS) tests

bench: $(VENV)/.installed-run
	$(BIN)/python -m benchmarks.run --suite cpu

clean-venv:
	rm -rf $(VENV)
