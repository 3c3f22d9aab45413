# Two commands from a fresh clone:   make train   then   make test
# Each sets up .venv first if it is missing (torch, then this project with its dev tools).
#
#   make train            train the default for this machine; leaves out/ckpt.pt
#   make sample           stream text from out/ckpt.pt
#   make test             the test suite
#   make help             this list, and the variables below
#
# Variables (make train ARGS="--max_iters=100", make test TORCH=torch==2.13.0, ...):
PYTHON ?= python3
VENV ?= .venv
# the torch requirement pip installs (pyproject asks for torch >= 2.5), and where from: empty is
# PyPI, whose Linux build is the multi-GB CUDA one; on a machine without an NVIDIA GPU,
# TORCH_INDEX=https://download.pytorch.org/whl/cpu installs the CPU-only build instead
TORCH ?= torch
TORCH_INDEX ?=
ARGS ?=
OUT ?= out

BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: help train sample test setup

help:
	@echo "make train     set up $(VENV) if needed, then train the default for this machine (out/ckpt.pt)"
	@echo "make sample    stream text from $(OUT)/ckpt.pt"
	@echo "make test      set up $(VENV) if needed, then run the test suite"
	@echo "variables: ARGS=\"--key=value ...\" (passed to train.py, sample.py or pytest), OUT=$(OUT),"
	@echo "  PYTHON=$(PYTHON), VENV=$(VENV), TORCH=$(TORCH), TORCH_INDEX=$(or $(TORCH_INDEX),PyPI)"
	@echo "  CPU-only machine: make train TORCH_INDEX=https://download.pytorch.org/whl/cpu (no CUDA download)"

setup: $(INSTALLED)

# reinstalled when pyproject.toml changes
$(INSTALLED): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing $(TORCH) from $(or $(TORCH_INDEX),PyPI) into $(VENV)"
	$(BIN)/pip install -q "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -q -e ".[dev]"
	@touch $@

train: $(INSTALLED)
	$(BIN)/python train.py --out_dir=$(OUT) $(ARGS)

sample: $(INSTALLED)
	$(BIN)/python sample.py --out_dir=$(OUT) $(or $(ARGS),--prompt="ROMEO:" --max_new_tokens=300)

test: $(INSTALLED)
	$(BIN)/python -m pytest -q $(ARGS)
