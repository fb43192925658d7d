# Set-up and the two main jobs. Every target creates .venv itself (Python 3.11+ only needed).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo lint test bench clean

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

clean:
	rm -rf $(VENV) demo-out asv_bench/results asv_bench/html
