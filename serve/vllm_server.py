"""The vLLM server: one deployment owning one vLLM AsyncLLM, playing the generator role, the
retriever role, or both (the CPU default: one SmolLM2 engine answers chat and scores documents).

The engine is started inside the replica's event loop (AsyncLLM binds to it). With the retriever
role it gets the QRHead hook: ``QRHEAD_ENABLED=1``, our worker extension and
``VLLM_CPU_OMP_THREADS_BIND`` over this engine's cores (``engine_args.engine_env``, with the
config's tensor_parallel_size); on CPU every engine is sized by what it needs
(``engine_args.engine_kwargs``). vLLM spawns its engine core and workers as child processes of
this replica; :meth:`__del__` shuts them down when Serve stops the replica, so nothing outlives
``serve.shutdown()``. Why this is not Ray Serve LLM's ``LLMServer``: docs/serving.md.
"""

from __future__ import annotations

import logging
import os
from typing import Any, AsyncIterator

from qrhead_vllm.models import resolve_model
from qrhead_vllm.ranker import score_only_kwargs
from qrhead_vllm.serve.args import EngineConfig
from qrhead_vllm.serve.errors import APIError
from qrhead_vllm.serve.generator import (build_openai_app, call_asgi, chat_with_documents,
                                         vllm_args)
from qrhead_vllm.serve.resilience import ACCEPTED
from qrhead_vllm.serve.server import RetrieverMixin, check_roles, no_generator, served_names

logger = logging.getLogger(__name__)


def engine_kwargs_for(cfg: EngineConfig, resolved, retriever: bool,
                      names: list[str]) -> dict[str, Any]:
    """vLLM engine arguments of one engine config (a score-only retriever gets the cut the
    library picks for its heads)."""
    from qrhead_vllm.integration.vllm.engine_args import engine_kwargs

    overrides = cfg.engine_overrides()
    dtype = overrides.pop("dtype", cfg.dtype)
    if retriever and cfg.score_only:
        overrides.update(score_only_kwargs(cfg.model, cfg.head_spec, cfg.last_layer))
    # A plain generator keeps vLLM's own defaults (CUDA graphs etc.) unless configured; every
    # engine on CPU is sized by what it needs (integration/memory.py).
    kwargs = engine_kwargs(resolved.path, dtype, qrhead=retriever,
                           kv_cache_sequences=cfg.kv_cache_sequences, **overrides)
    kwargs["served_model_name"] = names
    return kwargs


def start_engine(cfg: EngineConfig, resolved, retriever: bool, names: list[str]):
    """(AsyncLLM, its AsyncEngineArgs) for one engine config."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM
    from vllm.v1.metrics.ray_wrappers import RayPrometheusStatLogger
    from qrhead_vllm.integration.vllm.engine_args import engine_env

    os.environ.update(cfg.env)  # before vLLM reads its env and spawns the engine core
    engine_args = AsyncEngineArgs(**engine_kwargs_for(cfg, resolved, retriever, names))
    with engine_env(cfg.tensor_parallel_size, qrhead=retriever):
        # vLLM's metrics through Ray's metrics agent, beside Ray Serve's and QRHead's (the
        # way Ray Serve LLM starts its engines); GET /metrics shows all of them.
        engine = AsyncLLM.from_engine_args(engine_args, stat_loggers=[RayPrometheusStatLogger])
    return engine, engine_args


class VLLMServer(RetrieverMixin):
    """One AsyncLLM; ``roles`` says which of generator / retriever it plays."""

    engine = None

    async def __init__(self, cfg: EngineConfig, roles: tuple[str, ...]):
        check_roles(cfg, roles)
        resolved = resolve_model(cfg.model)
        self.names = served_names(cfg, resolved.model_id)
        self.engine, engine_args = start_engine(cfg, resolved, "retriever" in roles, self.names)
        if "retriever" in roles:
            from qrhead_vllm.integration.vllm.backend import AsyncVLLMBackend
            self.start_retriever(cfg, AsyncVLLMBackend(self.engine, resolved.path,
                                                       resolved.model_id), self.names)
        self.app = None
        if "generator" in roles:
            self.app = await build_openai_app(self.engine, vllm_args(engine_args, self.names))
        logger.info("vLLM engine %s ready: roles=%s", self.names[0], tuple(roles))

    async def openai(self, method: str, path: str, query: str, headers: list[tuple[str, str]],
                     body: bytes) -> AsyncIterator[dict[str, Any] | bytes]:
        """Streamed: ACCEPTED, then one HTTP request through vLLM's OpenAI app (see
        serve/generator.py)."""
        yield ACCEPTED
        stream = (call_asgi(self.app, method, path, query, headers, body) if self.app
                  else no_generator(path, ""))
        async for item in stream:
            yield item

    async def chat_documents(self, req, options) -> AsyncIterator[Any]:
        """Streamed: ACCEPTED, then a chat with documents (serve/chat_documents.py): the
        refusal, or the HTTP response start and body."""
        yield ACCEPTED
        if self.app is None or self.retriever is None:
            yield APIError(501, "chat with documents needs one engine that generates and scores "
                                "(generator: null in the app config); send the chat without "
                                "documents, or rank them with /v1/rerank")
            return
        async for item in chat_with_documents(self.app.state.openai_serving_chat,
                                              self.retriever, req, options):
            yield item

    async def check_health(self) -> None:
        """Serve's health probe (and the ingress's /health): an engine whose core died, or a
        retriever that cannot score a tiny request, makes the replica restart."""
        await self.engine.check_health()
        await self.check_retriever()

    def __del__(self):
        engine, self.engine = self.engine, None
        if engine is not None:
            engine.shutdown()
