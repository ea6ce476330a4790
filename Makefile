.PHONY: setup demo test bench lab-down

# The demo's lab prefix: `make demo PREFIX=me` builds namespaces me-route, me-macbook, …
# next to any other lab; `make lab-down PREFIX=me` removes that lab only.
PREFIX ?= wr

setup:
	@scripts/setup.sh

demo: setup
	@PREFIX='$(PREFIX)' scripts/demo.sh

test: setup
	.venv/bin/python -m pytest

bench: setup
	.venv/bin/python bench/explain_bench.py

lab-down: setup
	.venv/bin/why-route lab down --prefix '$(PREFIX)'
