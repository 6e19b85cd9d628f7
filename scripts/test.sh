#!/usr/bin/env bash
# Install everything the tests need into .venv, then run the whole suite (pytest arguments pass through).
# An existing torch (e.g. your CUDA build) is kept; otherwise torch 2.13.0 is installed before the rest.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[dev]"
exec python -m pytest "$@"
