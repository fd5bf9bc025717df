"""qrhead-vllm: zero-shot retrieval and re-ranking with query-focused retrieval heads, in vLLM
and SGLang.

Public surface::

    from qrhead_vllm import QRHeadRanker, HeadConfig, RankedResults

Everything but the exceptions is imported lazily: vLLM and SGLang import this package in every
worker process through their plugin entry points, and ``qrhead_vllm.core`` must import with
torch alone (no pydantic, yaml, transformers, engines or Ray; a test enforces it).
"""

from importlib import import_module

from qrhead_vllm.errors import (
    CaptureError, ContextOverflowError, EngineCompatibilityError, HeadConfigError,
    InsufficientMemoryError, InvalidInputError, QRHeadError,
)

__version__ = "0.1.0"

_LAZY = {
    "QRHeadRanker": "qrhead_vllm.ranker",
    "HeadConfig": "qrhead_vllm.heads",
    "RankedResults": "qrhead_vllm.results",
    "Result": "qrhead_vllm.results",
    "Document": "qrhead_vllm.results",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'qrhead_vllm' has no attribute {name!r}")


__all__ = [*_LAZY, "QRHeadError", "InvalidInputError", "ContextOverflowError",
           "HeadConfigError", "EngineCompatibilityError", "CaptureError",
           "InsufficientMemoryError"]
