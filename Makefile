# The README's two commands, plus the pieces of the second one.
.PHONY: plan test lint typecheck docs calibrate bench-venv bench

plan:
	python3 -m pip install -q -e . && byoc plan -f examples/byoc.yaml --out byoc-out

test:
	bash scripts/test.sh

lint:
	python3 -m ruff check . && python3 -m ruff format --check .

typecheck:
	python3 -m mypy

docs:
	byoc schema --markdown > docs/spec.md

calibrate:
	python3 scripts/calibrate_planner.py

# The gateway benchmark's outside reference, vLLM's Rust router, in a venv of its own: a benchmark dependency only.
bench-venv:
	test -x .venv-bench/bin/vllm-router || (python3 -m venv .venv-bench && .venv-bench/bin/pip install -q 'vllm-router==0.1.17')

bench: bench-venv
	python3 -m runtime.serve.bench --seconds 4 --repeat 3
