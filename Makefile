# Every target runs the same idempotent set-up first (scripts/bootstrap.sh).
VENV   := .venv
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup test test-unit lint bench demo clean

setup:
	@bash scripts/bootstrap.sh

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: setup
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check xdplbd tests bench
	$(VENV)/bin/mypy

bench: setup
	$(PY) -m bench

demo: setup
	$(PY) -m xdplbd.demo

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
