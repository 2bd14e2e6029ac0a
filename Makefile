# The two set-up commands (README): `make demo` and `make test`. Both install what they
# need first (a virtualenv in .venv, npm packages in node_modules), idempotently.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP_PY := $(VENV)/.installed
STAMP_NPM := node_modules/.installed
# checkov pins packaging<24 and python-dateutil<3, which pytest and kubernetes outgrow:
# it gets a virtualenv of its own inside .venv.
STAMP_CHECKOV := $(VENV)/checkov/.installed

.PHONY: install demo test lint unit integration bench clean

install: $(STAMP_PY) $(STAMP_NPM) $(STAMP_CHECKOV)

$(STAMP_PY): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

$(STAMP_CHECKOV): infra/requirements-checkov.txt $(STAMP_PY)
	$(PYTHON) -m venv $(VENV)/checkov
	$(VENV)/checkov/bin/pip install --quiet -r infra/requirements-checkov.txt
	touch $@

$(STAMP_NPM): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

demo: install
	$(PY) -m sandbox demo

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest

unit: install
	$(PY) -m pytest tests/unit tests/functional

bench: install
	$(PY) -m bench

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache .sandbox
