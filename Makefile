# The two set-up commands (README): `make demo` and `make test`. Each installs what it
# runs first (a virtualenv in .venv, npm packages in node_modules), idempotently:
# `make demo` the app and the sandbox (requirements-sandbox.txt), `make test` also the
# test tools (requirements-dev.txt), checkov for the infra tests and Debian's chromium
# for the status page's browser test.
PYTHON ?= python3
# The Python versions the app runs on (pyproject.toml's requires-python says the same;
# tests/unit/test_project.py keeps them in step): azure-functions 1.x declares <3.13.
PYTHON_SUPPORTED := 3.11 3.12
VENV := .venv
PY := $(VENV)/bin/python
STAMP_DEMO := $(VENV)/.installed-sandbox
STAMP_PY := $(VENV)/.installed
STAMP_NPM := node_modules/.installed
# checkov pins packaging<24 and python-dateutil<3, which pytest and kubernetes outgrow:
# it gets a virtualenv of its own inside .venv, and only the infra tests use it.
STAMP_CHECKOV := $(VENV)/checkov/.installed
# Playwright drives Debian's chromium: a browser build of Playwright's own cannot be
# fetched here, so `playwright install` is never run. Installed once (the file is the stamp).
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: install python-version demo test lint unit integration bench fuzz clean

install: $(STAMP_DEMO) $(STAMP_PY) $(STAMP_NPM) $(STAMP_CHECKOV) $(CHROMIUM)

# Before anything is installed: a one-line answer instead of a resolver error later.
python-version:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "vmss-node-patcher needs Python $(subst $() , or ,$(PYTHON_SUPPORTED)): $(PYTHON) is not on the PATH (make PYTHON=python3.11 ...)"; exit 1; }
	@$(PYTHON) -c 'import sys; v = "%d.%d" % sys.version_info[:2]; sys.exit(0 if v in "$(PYTHON_SUPPORTED)".split() else "vmss-node-patcher needs Python $(subst $() , or ,$(PYTHON_SUPPORTED)); $(PYTHON) is " + v + " (make PYTHON=python3.11 ...)")'

$(PY): | python-version
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP_DEMO): requirements.txt requirements-sandbox.txt pyproject.toml | $(PY) python-version
	$(PY) -m pip install --quiet -r requirements-sandbox.txt
	# The vmss-patcher command (cli/), from this checkout: .venv/bin/vmss-patcher.
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

$(STAMP_PY): requirements.txt requirements-sandbox.txt requirements-dev.txt | $(PY) python-version
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

$(STAMP_CHECKOV): infra/requirements-checkov.txt | $(PY) python-version
	$(PYTHON) -m venv $(VENV)/checkov
	$(VENV)/checkov/bin/pip install --quiet -r infra/requirements-checkov.txt
	touch $@

$(CHROMIUM):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

$(STAMP_NPM): package.json package-lock.json | python-version
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

demo: $(STAMP_DEMO) $(STAMP_NPM)
	$(PY) -m sandbox demo

lint: $(STAMP_PY)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	# The layering of shared/ (.importlinter): README "Architecture".
	$(VENV)/bin/lint-imports

test: lint $(STAMP_NPM) $(STAMP_CHECKOV) $(CHROMIUM)
	$(PY) -m pytest

unit: $(STAMP_PY)
	$(PY) -m pytest tests/unit tests/functional

bench: $(STAMP_PY) $(STAMP_NPM)
	$(PY) -m bench

# The long fuzz campaign (not in `make test`, which runs the bounded schemathesis pass):
# every payload parser under hypothesis, then schemathesis with many more examples per
# operation against the sandbox, and its stateful phase over many more scenarios. Prints
# the inputs tried; any failure names its input.
FUZZ_EXAMPLES ?= 15000
FUZZ_API_EXAMPLES ?= 1000
FUZZ_SCENARIOS ?= 200
fuzz: $(STAMP_PY) $(STAMP_NPM)
	PATCHER_FUZZ=1 PATCHER_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q -s tests/fuzz
	PATCHER_FUZZ_EXAMPLES=$(FUZZ_API_EXAMPLES) PATCHER_FUZZ_SCENARIOS=$(FUZZ_SCENARIOS) $(PY) -m pytest -q -s tests/integration/test_api_fuzz.py

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache .hypothesis .sandbox
