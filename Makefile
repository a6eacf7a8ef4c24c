# ModelMine: `make demo` runs the full local demo, `make test` runs the tests. Both set up everything first.
PY := .venv/bin/python

.PHONY: setup data demo test lint bench
setup:
	bash scripts/setup.sh

data: setup
	$(PY) scripts/prepare_data.py

demo: data
	$(PY) -m fl_server

test: setup
	$(PY) -m pytest -q --durations=25 tests

lint: setup
	$(PY) -m ruff check .
