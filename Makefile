.PHONY: setup demo test bench bench-scale lab-down

# The demo's lab prefix: `make demo PREFIX=me` builds namespaces me-route, me-macbook, …
# next to any other lab; `make lab-down PREFIX=me` removes that lab only.
PREFIX ?= wr

setup:
	@scripts/setup.sh

demo: setup
	@PREFIX='$(PREFIX)' scripts/demo.sh

test: setup
	.venv/bin/python -m pytest

# Every issue's speed figures, each against its baseline measured in the same script (about 6 min);
# bench-scale adds the 1,000,000-route namespace (about 8 min more). Bytecode is written first: the
# figures are of the tool as installed, not of its first-run compilation.
BENCH_PY = env -u PYTHONDONTWRITEBYTECODE .venv/bin/python

bench: setup
	@$(BENCH_PY) -m compileall -q tracer rules
	$(BENCH_PY) bench/explain_bench.py --skip-scale
	$(BENCH_PY) bench/check_bench.py
	$(BENCH_PY) bench/lint_bench.py
	$(BENCH_PY) bench/probe_bench.py
	$(BENCH_PY) bench/trace_bench.py
	$(BENCH_PY) bench/capture_bench.py
	$(BENCH_PY) bench/postmortem_bench.py

bench-scale: setup
	@$(BENCH_PY) -m compileall -q tracer rules
	$(BENCH_PY) bench/scale.py

lab-down: setup
	.venv/bin/why-route lab down --prefix '$(PREFIX)'
