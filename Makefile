# Two commands on a fresh clone: `make run` sets everything up (a virtual
# environment, torch, the package with its C++ kernels) and runs the main job;
# `make test` runs the tests. `.ci/run` runs exactly these two.
PYTHON ?= python3
VENV ?= .venv
# torch 2.13.0: PyPI's Linux wheel carries CUDA; for a CPU-only machine, e.g.
#   make run TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: run test test-all

# torch first (and numpy, which its C++ extension build imports), so that
# nothing later pulls another torch; --no-build-isolation builds the C++
# kernels against that torch
$(VENV)/.installed: pyproject.toml setup.py $(wildcard mrl_kernels/*/*_cpu.cpp mrl_kernels/*/*/*_cpu.cpp mrl_kernels/ops/common.h)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip setuptools
	$(BIN)/pip install $(TORCH) numpy
	$(BIN)/pip install --no-build-isolation -e ".[plot]"
	touch $@

# the test extra: pytest, hypothesis, pyarrow, and Triton for its interpreter tests; the serve
# extra (FAISS) for the NestedIndex tests
$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install --no-build-isolation -e ".[test,plot,serve]"
	touch $@

# MRL-M on the built-in synthetic data (a minute or two on 2 cores, selection and refit): runs/latest/
run: $(VENV)/.installed
	$(BIN)/mrl-train

# the default suite (a few minutes on 2 cores): everything but the tests marked slow
test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -m "not slow"

# every test, the slow end-to-end ones too
test-all: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q
