# Source this (`. scripts/sglang_cpu_env.sh`, in .venv-sglang) to run SGLang on a CPU-only box
# from the checkout: `qrhead rerank --backend sglang`, `qrhead detect --backend sglang`,
# `python -m bench.speed.speed_sglang`. SGLang 0.5.23 imports sgl_kernel and torchvision at
# module level and neither has a CPU build on PyPI; this puts the checkout's import-time
# stand-ins on PYTHONPATH (tests/sglang/stubs/README.md: a stand-in that is *called* records
# itself in $QRHEAD_STANDIN_LOG and raises, so a run that needed one fails loudly).
# The test suite sets the same up itself (tests/sglang/conftest.py). Not for GPU deployments:
# install the real sglang-kernel there.
_qrhead_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$_qrhead_root/tests/sglang/stubs${PYTHONPATH:+:$PYTHONPATH}"
export SGLANG_USE_CPU_ENGINE=1
export QRHEAD_STANDIN_LOG="${QRHEAD_STANDIN_LOG:-/tmp/qrhead-standin-$$.jsonl}"
unset _qrhead_root
