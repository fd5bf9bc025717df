"""Shared fixtures: the bundled models behind the transformers reference port, loaded once.

Loading a model takes seconds on the shared 2-core machine, so every test module that needs a
real model should use these session-scoped backends (and build rankers on top of them with
``QRHeadRanker(model=..., backend=<fixture>)``) instead of loading its own copy.
"""

from __future__ import annotations

import pytest

from pathlib import Path

from qrhead_vllm.datasets import load_hotpotqa
from qrhead_vllm.models import resolve_model

# Vendored real HotpotQA records (tests/data/README.md): the suites never need ../shared/data.
FIXTURES = Path(__file__).resolve().parent / "data"
HOTPOTQA_DETECT = FIXTURES / "hotpotqa-detect-6.jsonl"
HOTPOTQA_EVAL = FIXTURES / "hotpotqa-eval-10.jsonl"


def _load_backend(name: str):
    from qrhead_vllm.backends.transformers_backend import TransformersBackend

    resolved = resolve_model(name)
    return TransformersBackend(resolved.path, resolved.model_id)


@pytest.fixture(scope="session")
def bundled_model_path():
    """``name -> local fp32 HF directory`` of a bundled model (dequantised once, then cached)."""
    return lambda name: resolve_model(name).path


@pytest.fixture(scope="session")
def smollm2_backend():
    """TransformersBackend of SmolLM2-135M-Instruct (Llama arch, GQA 9 q / 3 kv heads), fp32 CPU."""
    backend = _load_backend("smollm2-135m")
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def gemma3_backend():
    """TransformersBackend of Gemma 3 270M base (sliding + global layers, qk-norm), fp32 CPU."""
    backend = _load_backend("gemma3-270m")  # the [gemma] extra is part of the test install
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def hotpotqa_split():
    """(detection, evaluation) records of the vendored HotpotQA sample (6 + 10), taken from the
    two halves of ``qrhead_vllm.datasets.split_examples`` of the shared file."""
    return load_hotpotqa(HOTPOTQA_DETECT), load_hotpotqa(HOTPOTQA_EVAL)


@pytest.fixture(scope="session")
def hotpotqa_records():
    """The vendored records as plain dicts (detection sample first, then evaluation)."""
    from tests.serve_harness import hotpotqa_examples
    return hotpotqa_examples(HOTPOTQA_DETECT) + hotpotqa_examples(HOTPOTQA_EVAL)


@pytest.fixture(scope="session")
def serve_app():
    """The real app (Ray on this machine, vLLM on CPU, bundled SmolLM2, shipped heads), started
    once per session: an engine start costs minutes on a 2-core box. It keeps this process
    connected to Ray until the session ends, so the modules that use it are named test_serve_*
    (and test_soak): pytest runs files by name, and test_detect's own ray.init must come first."""
    from qrhead_vllm.serve.launch import start_local, stop_local
    from tests.serve_harness import (RunningApp, app_config, offline_reference,
                                           reference_cases)

    cfg = app_config(**{"retriever.dtype": "float32"})  # HTTP == offline, exactly
    from tests.serve_harness import hotpotqa_examples
    cases = reference_cases(hotpotqa_examples(HOTPOTQA_EVAL))
    reference = offline_reference(cfg, cases)     # its engine exits before the app starts
    url = start_local(cfg, num_cpus=2)
    try:
        yield RunningApp(url, cfg, cases, reference)
    finally:
        stop_local()


# --- a skipped test is a gap, not a pass ------------------------------------------------------
_SKIPPED: list[str] = []
_AMX_SKIPPED: list[str] = []    # end-to-end AMX tests on a CPU without AMX: counted, accepted


def pytest_runtest_logreport(report):
    if report.skipped and "amx" in report.keywords:
        _AMX_SKIPPED.append(report.nodeid)
    elif report.skipped and "gpu" not in report.keywords:
        _SKIPPED.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    """Fail the run when any test outside the ``gpu`` and ``amx`` markers skipped (dependencies
    and data are part of the test install; a skip would hide a gap)."""
    if _SKIPPED and exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(f"skips under the amx marker (this CPU has no AMX): "
                                f"{len(_AMX_SKIPPED)}")
    terminalreporter.write_line(f"skips outside the gpu/amx markers: {len(_SKIPPED)}"
                                + (" (these fail the run)" if _SKIPPED else ""))
    for nodeid in _SKIPPED:
        terminalreporter.write_line(f"  skipped: {nodeid}")
