# The two commands of the README: `make run` and `make test`; `make lint` is CI's gate.
.PHONY: run test setup unit schemas lint lock

setup:
	@./scripts/setup.sh

run: setup
	.venv/bin/provisio dev

test: setup
	.venv/bin/python -m pytest

unit: setup
	.venv/bin/python -m pytest -m unit

schemas: setup
	.venv/bin/python -m provisio_lib.contract

# ruff (lint, then formatting) and mypy, configured in pyproject.toml. CI runs this first.
lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

# Regenerate requirements*.lock after a dependency change in pyproject.toml.
lock: setup
	./scripts/lock.sh
