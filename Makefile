# Set-up and the two main jobs. Every target creates .venv itself (Python 3.11+ only needed).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test bench ptx-check gpu-wheels gpu-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# One stamp per set of extras, redone when pyproject.toml changes.
$(VENV)/.installed-%: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[$*]"
	touch $@

demo: $(VENV)/.installed-examples
	$(BIN)/fastlr demo --out demo-out

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q

bench: $(VENV)/.installed-bench
	cd asv_bench && ../$(BIN)/asv machine --yes && ../$(BIN)/asv run --python=same --quick --show-stderr

# Every CUDA kernel compiled to PTX for an H100/H200 (cc 9.0), no GPU needed: a venv of its own
# (numpy, numba, numba-cuda and ~460 MB of NVIDIA compiler wheels, no torch); docs/GPU.md.
PTX_VENV := .venv-ptx
$(PTX_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(PTX_VENV)
	$(PTX_VENV)/bin/python -m pip install -q -e ".[ptx]"
	touch $@

ptx-check: $(PTX_VENV)/.installed
	$(PTX_VENV)/bin/python -m fastlr.kernels.ptx

clean:
	rm -rf $(VENV) $(PTX_VENV) demo-out asv_bench/results asv_bench/html
