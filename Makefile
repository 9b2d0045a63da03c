.PHONY: setup demo test lint bench clean

setup:
	@./scripts/setup.sh

demo: setup
	.venv/bin/cryostack demo --out demo_out

# Lint and type check first: a red lint fails CI like a red test.
test: setup lint
	.venv/bin/python -m pytest -q

lint: setup
	.venv/bin/ruff check src tests benchmarks scripts
	.venv/bin/ruff format --check src tests benchmarks scripts
	.venv/bin/mypy

bench: setup
	.venv/bin/python benchmarks/density.py

clean:
	rm -rf demo_out .pytest_cache .mypy_cache .ruff_cache
