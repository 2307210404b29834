# `make run` runs the main job on the shipped default config; `make test` runs the checks (lint, format, types)
# and the test suite; `make check` the checks alone. Each creates .venv, installs requirements and this project
# (editable) on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test check venv clean

run: $(STAMP)
	$(PY) main.py

test: check
	$(PY) -m pytest -q tests

check: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

venv: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

clean:
	rm -rf $(VENV)
