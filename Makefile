# The two set-up commands of the README. Each creates .venv and installs what it needs.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python

.PHONY: demo test check bench clean

$(VENV)/.installed-%: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[$*]"
	touch $@

demo: $(VENV)/.installed-demo
	$(VENV)/bin/llmtally demo

# The checks (lint, formatting, mypy --strict, the import layers), then the tests.
check: $(VENV)/.installed-test
	$(VENV)/bin/ruff check src tests bench docs
	$(VENV)/bin/ruff format --check src tests bench docs
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

test: check
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: $(VENV)/.installed-bench
	PYTHON=$(abspath $(PY)) bash bench/run_all.sh

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .hypothesis
