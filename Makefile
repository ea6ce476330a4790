.PHONY: setup demo test bench lab-down

setup:
	@scripts/setup.sh

demo: setup
	@scripts/demo.sh

test: setup
	.venv/bin/python -m pytest

bench: setup
	.venv/bin/python bench/explain_bench.py

lab-down: setup
	.venv/bin/why-route lab down
