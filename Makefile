# The two commands of the README: `make run` and `make test`.
.PHONY: run test setup unit schemas

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
