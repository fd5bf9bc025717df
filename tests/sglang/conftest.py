"""The SGLang suite's environment (runs in .venv-sglang with scripts/test_sglang.sh; the vLLM run
never collects this folder). The fixtures of tests/conftest.py (reference port, vendored data)
and its no-skip rule apply here too.

SGLang 0.5.23 imports two packages at module level that have no CPU build on PyPI:
``sgl_kernel`` (only CUDA wheels; upstream's CPU kernels are a source build for AMX/AVX-512
Xeons) and ``torchvision`` (PyPI's wheel is a CUDA build that breaks against the CPU torch).
``tests/sglang/stubs`` holds import-time stand-ins for both, put on ``sys.path`` here and, via
``PYTHONPATH``, in every process the engines spawn. A stand-in may be imported and looked up;
a *call* records itself in ``$QRHEAD_STANDIN_LOG`` (from any process) and raises. The session
fails if the log is not empty at the end (and ``test_sglang_standins.py`` checks the mechanism).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

STUBS = Path(__file__).resolve().parent / "stubs"
STANDIN_LOG = Path(tempfile.gettempdir()) / f"qrhead-standin-{os.getpid()}.jsonl"


def _environment() -> None:
    """Set before sglang is first imported (it reads SGLANG_USE_CPU_ENGINE at import)."""
    sys.path.insert(0, str(STUBS))
    paths = [str(STUBS)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(paths)
    os.environ["QRHEAD_STANDIN_LOG"] = str(STANDIN_LOG)
    os.environ.setdefault("SGLANG_USE_CPU_ENGINE", "1")
    STANDIN_LOG.unlink(missing_ok=True)


_environment()
from _standin import recorded_calls as standin_calls  # noqa: E402  (needs the path above)


@pytest.fixture(scope="session")
def sglang_smollm2():
    """QRHeadRanker(backend="sglang") on the bundled SmolLM2, one engine per session.

    A 512-token chunked-prefill budget makes every HotpotQA prompt (1.3-1.6K tokens) take
    several steps, and splits the query span across two of them for some prompts; shorter
    prompts (a few documents) are prefilled in one step.
    """
    from qrhead_vllm.ranker import QRHeadRanker
    from sglang_helpers import SMOLLM2_HEADS
    ranker = QRHeadRanker("smollm2-135m", heads=SMOLLM2_HEADS, backend="sglang",
                          max_model_len=4096, chunked_prefill_size=512, max_running_requests=16,
                          dtype="float32")
    yield ranker
    ranker.close()


def pytest_sessionfinish(session, exitstatus):
    calls = standin_calls()
    if calls and exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter):
    calls = standin_calls()
    terminalreporter.write_line(f"CPU stand-in calls (sgl_kernel / torchvision): {len(calls)}"
                                + (" (these fail the run)" if calls else ""))
    for call in calls:
        terminalreporter.write_line(f"  called: {call['name']} (pid {call['pid']})")
