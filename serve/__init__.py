"""Ray Serve app: vLLM's OpenAI API, Cohere-format /v1/rerank with QRHead scores, and
retrieval-augmented /v1/answer, on one cluster.

    serve run configs/serve/cpu.yaml          # or: qrhead serve
    serve deploy configs/serve/cluster.yaml

Modules: ``args`` (typed config), ``builder`` (``build_qrhead_app``), ``ingress`` (HTTP routes),
``server`` (what every engine server shares: the retriever role), ``vllm_server`` /
``sglang_server`` (one server per engine, named by qrhead_vllm.engines), ``generator``
(vLLM's OpenAI app over a Ray handle), ``retriever`` + ``windows`` (QRHead scoring),
``scoring`` (a request's ScoringOptions), ``rerank`` / ``answer`` (wire formats),
``answer_flow`` (/v1/answer's modes), ``errors`` (one error shape), ``launch`` (local
start/stop). See docs/serving.md.
"""

from __future__ import annotations

from typing import Any

__all__ = ["QRHeadServeConfig", "build_qrhead_app"]


def __getattr__(name: str) -> Any:
    # Lazy: `import qrhead_vllm.serve.args` (config checks, the CLI's --help) must not import Ray and vLLM.
    if name == "QRHeadServeConfig":
        from qrhead_vllm.serve.args import QRHeadServeConfig
        return QRHeadServeConfig
    if name == "build_qrhead_app":
        from qrhead_vllm.serve.builder import build_qrhead_app
        return build_qrhead_app
    raise AttributeError(name)
