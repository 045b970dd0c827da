# Two commands for a newcomer: `make demo` (set up + run the service on demo data) and
# `make test` (set up + run the checks CI runs).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= train,detect,dev

.PHONY: setup test lint demo bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[$(EXTRAS)]'
	touch $@

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest

demo: setup
	$(BIN)/facebridge demo run

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache demo-data
