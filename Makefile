# The two commands: `make serve` (set up, then serve the embedded default model on
# 127.0.0.1:8080) and `make test` (set up, then run the whole test suite).
VENV ?= .venv
PORT ?= 8080

.PHONY: serve test setup bench lint

setup:
	@VENV=$(VENV) scripts/setup.sh

serve: setup
	$(VENV)/bin/hearth serve --port $(PORT)

test: setup lint
	$(VENV)/bin/python -m pytest -q

lint: setup
	$(VENV)/bin/python -m ruff check gateway worker shared tests
	$(VENV)/bin/python -m mypy
