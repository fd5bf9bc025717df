#!/usr/bin/env bash
# The project's test command (README and .ci/run call exactly this). Real components: vLLM on
# CPU, Ray, HTTP servers and the bundled models; nothing is mocked beyond pure-function units.
# The run ends with pytest's summary line (`N passed ...`); any skip outside the `gpu` and `amx`
# markers fails the run (tests/conftest.py, which prints the amx skips' count), and -rs prints
# the reason of each.
# Run without arguments and with .venv-sglang present (`bash scripts/install.sh --sglang`, as
# .ci/run does), it then runs the SGLang suite in that venv too (scripts/test_sglang.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export VLLM_CACHE_ROOT="${VLLM_CACHE_ROOT:-$PWD/.cache/vllm}"   # keep vLLM's cache off $HOME
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1                  # no model hub at run time
export RAY_USAGE_STATS_ENABLED=0
if [ "$#" -gt 0 ] || [ ! -x .venv-sglang/bin/python ]; then
    exec python -m pytest -p no:cacheprovider -rs --durations=15 --timeout=1800 "$@"
fi
python -m pytest -p no:cacheprovider -rs --durations=15 --timeout=1800
deactivate
bash scripts/test_sglang.sh
