# Two entry points: `make serve` (set up, then run the service on config.toml) and
# `make test` (set up, install the DICOM peers the tests talk to, lint and format check, run
# every test; on CI, CI=true, a skipped test fails the run).
VENV ?= .venv
PYTHON ?= python3

.PHONY: setup system-deps serve test lint

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip
	$(VENV)/bin/pip install -e '.[test]'
	touch $@

system-deps:
	bash .ci/system-deps

serve: setup
	$(VENV)/bin/tamperscan serve --config config.toml

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: setup system-deps lint
	$(VENV)/bin/pytest
