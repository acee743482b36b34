#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian machine with Python >= 3.11, then run every check:
# ruff (lint + format), mypy (strict on byoc/) and pytest (unit + integration against real local servers).
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1

SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

# Debian packages: Prometheus (promtool and a real server for the metrics tests), Chromium (opens the HTML
# compliance report headless), redis-server (the store the gateway replicas share: the shared limits and usage
# ledger tests), iproute2 (`ss`: the kernel's view of the gateway's TCP keepalive timers).
missing=""
command -v promtool >/dev/null 2>&1 || missing="$missing prometheus"
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
command -v ss >/dev/null 2>&1 || missing="$missing iproute2"
if [ -n "$missing" ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

# checkov pins an old boto3, so it lives in a virtual environment of its own (tests find .venv-checkov/bin/checkov).
if [ ! -x .venv-checkov/bin/checkov ]; then
  python3 -m venv .venv-checkov
  .venv-checkov/bin/pip install -q checkov
fi

# torch first, pinned: this is the CPU wheel on these machines; anything asking for a newer torch would pull
# several GB of CUDA.
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e '.[dev,runtime,gcp]'

# npm: the upstream CRD schemas (KEDA, Karpenter, prometheus-operator) tests/stacks/test_crd_schemas.py validates
# the rendered custom resources against, pinned by tests/crd_schemas/package-lock.json. Reinstalled only when
# node_modules is missing or the lock changed (a stamp of the lock's hash sits in node_modules).
if ! command -v npm >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
fi
crd_lock_hash="$(sha256sum tests/crd_schemas/package-lock.json | cut -d' ' -f1)"
if [ "$(cat tests/crd_schemas/node_modules/.byoc-lock.sha256 2>/dev/null)" != "$crd_lock_hash" ]; then
  # The packages declare Node >= 22 but run on Node 20 (checked by the test itself): keep engine warnings quiet.
  npm ci --prefix tests/crd_schemas --no-audit --no-fund --loglevel=error
  echo "$crd_lock_hash" >tests/crd_schemas/node_modules/.byoc-lock.sha256
fi

python3 -m ruff check .
python3 -m ruff format --check .
python3 -m mypy
# Every test folder must contribute tests, and the total may only grow (raise tests/min-collected.txt with it).
python3 -m pytest --min-collected "$(cat tests/min-collected.txt)" "$@"
