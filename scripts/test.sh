#!/usr/bin/env bash
# The project's test command (README and .ci/run call exactly this). Real components: vLLM on
# CPU, Ray, HTTP servers and the bundled model; nothing is mocked beyond pure-function units.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export VLLM_CACHE_ROOT="${VLLM_CACHE_ROOT:-$PWD/.cache/vllm}"   # keep vLLM's cache off $HOME
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1                  # no model hub at run time
export RAY_USAGE_STATS_ENABLED=0
exec python -m pytest -q -p no:cacheprovider --timeout=1800 "$@"
