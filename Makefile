# One command checks everything, locally and in CI: `make check`.
PY := .venv/bin/python
SRC := domain listener sagas projector cardpay

.PHONY: setup check lint typecheck imports test test-unit demo

setup:
	bash scripts/setup.sh

check: setup lint typecheck imports test

lint:
	$(PY) -m ruff check $(SRC) tests tools benchmarks

typecheck:
	$(PY) -m mypy

imports:
	.venv/bin/lint-imports

test:
	$(PY) -m pytest

test-unit:
	$(PY) -m pytest -m unit

mutants: ; $(PY) tools/mutation_survey.py $(ARGS)  # not in check; ARGS="--only NAME", --list

demo: setup
	.venv/bin/cardpay demo
