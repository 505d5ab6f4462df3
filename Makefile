# Two commands on a fresh clone: `make run` sets everything up (a virtual
# environment, torch, the package with its C++ kernels) and runs the main job;
# `make test` runs the tests. `.ci/run` runs exactly these two. `make install`
# sets up what both need (the tests' extras and torchrec included) and runs nothing.
PYTHON ?= python3
VENV ?= .venv
# torch 2.13.0: PyPI's Linux wheel carries CUDA; for a CPU-only machine, e.g.
#   make run TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
TORCH ?= torch==2.13.0
# torchrec and FBGEMM built for that torch (the 1.9 pair needs torch 2.14; mixed
# pairs fail at import). Installed without their dependencies, which would pull
# the CUDA build of FBGEMM; the torchrec extra adds what they import (the same
# pins as mrl_kernels.distributed.TORCHREC_INSTALL, the command messages give). On CUDA,
# TORCHREC="torchrec==1.8.0 fbgemm-gpu==1.8.0"; TORCHREC= leaves them out
# (the torchrec tests then skip).
TORCHREC ?= torchrec==1.8.0 fbgemm-gpu-cpu==1.8.0
BIN := $(VENV)/bin
comma := ,

.PHONY: install run test test-all

# torch first (and numpy, which its C++ extension build imports), so that
# nothing later pulls another torch; --no-build-isolation builds the C++
# kernels against that torch
$(VENV)/.installed: pyproject.toml setup.py $(wildcard mrl_kernels/*/*_cpu.cpp mrl_kernels/*/*/*_cpu.cpp mrl_kernels/ops/common.h)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip setuptools
	$(BIN)/pip install $(TORCH) numpy
	$(BIN)/pip install --no-build-isolation -e ".[plot]"
	touch $@

# the test extra: pytest (and pytest-xdist), hypothesis, pyarrow, Triton for its interpreter tests, implicit,
# optuna, tabulate (the bench commands' tests);
# the serve extra (FAISS) for the NestedIndex tests; torchrec for the integration's tests
$(VENV)/.installed-test: $(VENV)/.installed
	$(if $(strip $(TORCHREC)),$(BIN)/pip install --no-deps $(TORCHREC))
	$(BIN)/pip install --no-build-isolation -e ".[test,plot,serve$(if $(strip $(TORCHREC)),$(comma)torchrec)]"
	touch $@

# the environment of `make run` and `make test`, set up without running anything:
# the virtual environment, torch, the package with its C++ kernels, the extras the
# tests use (torchrec and FBGEMM among them); then $(VENV)/bin/mrl-train, pytest, ...
install: $(VENV)/.installed-test

# MRL-M on the built-in synthetic data (a minute or two on 2 cores, selection and refit): runs/latest/
run: $(VENV)/.installed
	$(BIN)/mrl-train

# the default suite in PYTEST_WORKERS processes (pytest-xdist)
PYTEST_WORKERS ?= 2

# the default suite (under 4 minutes on 2 cores): everything but the tests marked slow
test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) -m "not slow"

# every test, the slow end-to-end ones too, in one process (tests/ops/test_int64_scale.py
# takes about 12 GiB a case: two at once exceed this machine's 24 GiB)
test-all: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q
