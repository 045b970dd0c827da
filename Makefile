# Two commands for a newcomer: `make demo` (set up + run the service on demo data) and
# `make test` (set up + run the checks CI runs).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= tables,train,detect,milvus,dev

.PHONY: setup test lint demo bench clean browser

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

# Debian's Chromium + chromedriver for the console's browser tests (as root: CI and the dev
# machines). Installed from the distribution's packages; nothing downloads a browser at run time.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then \
		echo "chromium and chromium-driver present"; \
	else \
		apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			chromium chromium-driver; \
	fi

demo: setup
	$(BIN)/facebridge demo run

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache demo-data
