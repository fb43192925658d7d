# Set-up and the two main jobs. Every target creates .venv itself (Python 3.11+ only needed).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo lint test bench ptx-check gpu-wheels gpu-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# One stamp per set of extras, redone when pyproject.toml changes.
$(VENV)/.installed-%: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[$*]"
	touch $@

demo: $(VENV)/.installed-examples
	$(BIN)/fastlr demo --out demo-out

# ruff (settings in pyproject.toml) comes with the test extra; `make test` lints first.
lint: $(VENV)/.installed-test
	$(BIN)/ruff check .

test: lint
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

# On a machine with an NVIDIA GPU, in one command of at most 8 minutes (docs/GPU.md): a venv
# over the image's own packages (torch, numba-cuda, cupy) with the carried wheels first, then
# every check of fastlr.gpuchecks; the report goes to $$OUT (else ./gpu-report). Carry
# $(GPU_WHEELS) there, made here by `make gpu-wheels` (numba-cuda 0.30 breaks on numpy 2.5).
GPU_WHEELS := .gpu-wheels
GPU_VENV   := .venv-gpu
gpu-wheels:
	mkdir -p $(GPU_WHEELS)
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
		--platform manylinux_2_28_x86_64 -d $(GPU_WHEELS) numpy==2.4.6 "setuptools>=77"

gpu-check:
	rm -rf $(GPU_VENV) && $(PYTHON) -m venv --without-pip $(GPU_VENV)
	$(PYTHON) -c "import sys; print('\n'.join(p for p in sys.path if p.endswith(('site-packages', 'dist-packages'))))" \
		> "$$($(GPU_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/_image.pth"
	if ls $(GPU_WHEELS)/*.whl >/dev/null 2>&1; then \
		$(GPU_VENV)/bin/python -m pip install -q --no-index --no-deps $(GPU_WHEELS)/*.whl; \
	else echo "no $(GPU_WHEELS)/*.whl: the image's numpy is used (make gpu-wheels, docs/GPU.md)"; fi
	$(GPU_VENV)/bin/python -m pip install -q --no-index --no-deps --no-build-isolation -e .
	$(GPU_VENV)/bin/python -m fastlr.gpucheck

clean:
	rm -rf $(VENV) $(PTX_VENV) $(GPU_VENV) demo-out gpu-report asv_bench/results asv_bench/html
