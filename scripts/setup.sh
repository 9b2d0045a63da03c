#!/usr/bin/env bash
# Idempotent set-up: creates .venv and installs cryostack with its test dependencies.
# torch is installed first and pinned so pip takes the local CPU wheel, never a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3

stamp=.venv/.cryostack-setup
inputs_hash=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$inputs_hash" ] && [ -x .venv/bin/cryostack ]; then
    exit 0
fi

echo "cryostack set-up: creating .venv and installing dependencies"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[test]"
echo "$inputs_hash" > "$stamp"
echo "cryostack set-up: done"
