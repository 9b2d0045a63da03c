.PHONY: setup demo test bench clean

setup:
	@./scripts/setup.sh

demo: setup
	.venv/bin/cryostack demo --out demo_out

test: setup
	.venv/bin/python -m pytest -q

bench: setup
	.venv/bin/python benchmarks/density.py

clean:
	rm -rf demo_out .pytest_cache
