"""What every engine server of the app shares: the retriever role behind typed handle methods.

One server class per engine (``serve/vllm_server.py``, ``serve/sglang_server.py``; the engine
registry, :mod:`qrhead_vllm.engines`, names which), in the shape of Ray Serve LLM's
``LLMServer`` / ``SGLangServer``: an async constructor that starts the engine in the replica's
event loop, ``check_health`` for Serve's probe, and plain async methods the ingress calls
through its handle with typed arguments (``handle.options(stream=True).rerank.remote(req,
options)``: the parsed request and its ScoringOptions). A client's mistake
comes back as an item of the stream (an ``APIError``: Serve logs every exception that leaves a
replica with its traceback); other failures cross the handle as exceptions (picklable); the
ingress maps both to HTTP in one place (``serve/resilience.py:open_stream``).

Every method the ingress calls is a stream whose first item is ``ACCEPTED``
(serve/resilience.py): the ingress bounds how long a request may wait for a replica to take
it (none running, or all full) without bounding the work itself (``open_stream``).
"""

from __future__ import annotations

from typing import Any, AsyncIterator

from qrhead_vllm import metrics
from qrhead_vllm.models import BUNDLED
from qrhead_vllm.scorers import ScoringOptions
from qrhead_vllm.serve.answer import Retrieval
from qrhead_vllm.serve.args import EngineConfig, RetrieverConfig
from qrhead_vllm.serve.errors import APIError
from qrhead_vllm.serve.health import ScoringProbe
from qrhead_vllm.serve.rerank import RerankRequest
from qrhead_vllm.serve.resilience import answer_stream


def served_names(cfg: EngineConfig, model_id: str) -> list[str]:
    """Names clients may use: configured ones, else the model id (+ the bundled short name)."""
    if cfg.served_model_name:
        return list(cfg.served_model_name)
    return [model_id] + ([cfg.model] if cfg.model in BUNDLED and cfg.model != model_id else [])


def check_roles(cfg: EngineConfig, roles: tuple[str, ...]) -> None:
    if "retriever" in roles and not isinstance(cfg, RetrieverConfig):
        raise TypeError("the retriever role needs a RetrieverConfig")


class RetrieverMixin:
    """The retriever role of an engine server: ``rerank`` and ``retrieve`` over the server's
    scoring backend (``self.retriever`` is None when the server plays the generator only).
    Every request it scores is also the proof its health check needs (serve/health.py)."""

    retriever = None
    probe: ScoringProbe | None = None

    def start_retriever(self, cfg: RetrieverConfig, backend, names: list[str]) -> None:
        from qrhead_vllm.serve.retriever import Retriever
        self.retriever = Retriever(cfg, backend, names)
        self.probe = ScoringProbe()      # check_health scores when no request did lately

    async def rerank(self, req: RerankRequest, options: ScoringOptions
                     ) -> AsyncIterator[str | dict[str, Any]]:
        """Streamed: ACCEPTED, then one validated ``/v1/rerank`` request's response body (or
        the client error it is refused with: serve/resilience.py:answer_stream)."""
        async for item in answer_stream(lambda: self._scored(self._retriever().rerank, req,
                                                             options)):
            yield item

    async def retrieve(self, req: Retrieval, options: ScoringOptions
                       ) -> AsyncIterator[str | dict[str, Any]]:
        """Streamed: ACCEPTED, then the retrieval half of ``/v1/answer``: the best ``top_k``
        passages, cited (or the client error it is refused with)."""
        async for item in answer_stream(lambda: self._scored(self._retriever().retrieve, req,
                                                             options)):
            yield item

    async def check_retriever(self) -> None:
        """Raise unless the retriever can score (a rate-limited tiny request, see
        serve/health.py); a server without the retriever role has nothing to prove. Also
        refreshes the workers' capture gauges (qrhead_vllm/metrics.py): one round trip to the
        engine per health check, so /metrics shows them without a call of its own."""
        retriever = self.retriever
        if retriever is not None:
            await self.probe.check(lambda req: retriever.rerank(req, retriever.default_options))
            backend = retriever.backend
            metrics.record_capture_state(backend.facts.model_id, await backend.stats_async())

    async def _scored(self, score, *args) -> dict[str, Any]:
        self.probe.started()
        ok = False
        try:
            result, ok = await score(*args), True
        finally:
            self.probe.finished(ok)
        return result

    def _retriever(self):
        if self.retriever is None:
            raise APIError(404, "this engine has no retriever role")
        return self.retriever


async def no_generator(path: str, why: str) -> AsyncIterator[APIError]:
    """The ``openai`` stream of a server without the generator role: a 404 saying why, as an
    item (a client mistake, not raised: serve/resilience.py:answer_stream)."""
    yield APIError(404, f"{path} is served by the generator; this engine only scores{why}")
