# The README's two commands, plus the pieces of the second one.
.PHONY: plan test lint typecheck docs calibrate

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
