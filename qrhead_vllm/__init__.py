"""qrhead-vllm: zero-shot retrieval and re-ranking with query-focused retrieval heads, in vLLM.

Public surface::

    from qrhead_vllm import QRHeadRanker, HeadConfig, RankedResults
"""

from qrhead_vllm.errors import (
    ContextOverflowError, EngineCompatibilityError, HeadConfigError, InvalidInputError, QRHeadError,
)
from qrhead_vllm.heads import HeadConfig
from qrhead_vllm.results import Document, RankedResults, Result

__version__ = "0.1.0"


def __getattr__(name):
    # QRHeadRanker pulls in the backends; import it lazily so `import qrhead_vllm` stays cheap
    # (vLLM imports this package in every worker process through the plugin entry point).
    if name == "QRHeadRanker":
        from qrhead_vllm.ranker import QRHeadRanker
        return QRHeadRanker
    raise AttributeError(name)


__all__ = ["QRHeadRanker", "HeadConfig", "RankedResults", "Result", "Document", "QRHeadError",
           "InvalidInputError", "ContextOverflowError", "HeadConfigError",
           "EngineCompatibilityError"]
