#!/usr/bin/env bash
# The whole suite with every dependency in pyproject.toml at its floor (uv's lowest-direct resolution; torch 2.6.0,
# a CUDA build of about 3 GB from PyPI), in .venv-floors. Run it after lowering or adding a floor: CI tests the
# newest releases only. The test tools (the `test` extra) are at their newest; Ray's tests are left out, since
# ray[serve] needs a newer protobuf than localimg's floor (run them with `.[ray]` installed).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-floors work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

[ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/python" -m pip install -q uv
uv=("$venv/bin/uv" pip)
"${uv[@]}" compile -q --python "$venv/bin/python" --resolution lowest-direct pyproject.toml -o "$work/floors.txt"
echo '-e .[test]' >"$work/test.txt"
"${uv[@]}" compile -q --python "$venv/bin/python" "$work/test.txt" -c "$work/floors.txt" -o "$work/all.txt"
"${uv[@]}" sync -q --python "$venv/bin/python" "$work/all.txt"
"$venv/bin/python" -m pip list --format freeze | grep -iE '^(torch|diffusers|transformers|accelerate|fastapi|uvicorn)=='
exec "$venv/bin/python" -m pytest --ignore=tests/e2e/test_ray_serve.py --ignore=tests/unit/test_ray_serve_args.py "$@"
