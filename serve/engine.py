"""The deployment that owns one vLLM AsyncLLM and plays the generator role, the retriever role,
or both (the CPU default: one SmolLM2 engine answers chat and scores documents).

The engine is started inside the replica's event loop (AsyncLLM binds to it). With the retriever
role it gets the QRHead hook: ``QRHEAD_ENABLED=1``, our worker extension and
``VLLM_CPU_OMP_THREADS_BIND`` over all cores (``prepare_engine_env``). vLLM spawns its engine
core and workers as child processes of this replica; :meth:`__del__` shuts them down when Serve
stops the replica, so nothing outlives ``serve.shutdown()``.
"""

from __future__ import annotations

import logging
import os
from typing import Any, AsyncIterator

from ray import serve

from qrhead_vllm.errors import QRHeadError
from qrhead_vllm.models import BUNDLED, resolve_model
from qrhead_vllm.serve.args import EngineConfig, RetrieverConfig
from qrhead_vllm.serve.errors import APIError, to_api_error
from qrhead_vllm.serve.generator import build_openai_app, call_asgi, vllm_args
from qrhead_vllm.serve.rerank import RerankRequest

logger = logging.getLogger(__name__)


def served_names(cfg: EngineConfig, model_id: str) -> list[str]:
    """Names clients may use: configured ones, else the model id (+ the bundled short name)."""
    if cfg.served_model_name:
        return list(cfg.served_model_name)
    return [model_id] + ([cfg.model] if cfg.model in BUNDLED and cfg.model != model_id else [])


def engine_kwargs_for(cfg: EngineConfig, resolved, retriever: bool,
                      names: list[str]) -> dict[str, Any]:
    """vLLM engine arguments of one engine config (a score-only retriever gets its cut)."""
    from qrhead_vllm.integration.vllm.engine_args import engine_kwargs

    overrides = cfg.vllm_overrides()
    dtype = overrides.pop("dtype", cfg.dtype)
    if retriever and getattr(cfg, "score_only", False):
        from qrhead_vllm.ranker import score_only_cut
        heads = None if cfg.heads == "default" else cfg.heads
        overrides["last_layer"] = score_only_cut(cfg.model, heads, cfg.last_layer)
    # A plain generator keeps vLLM's own defaults (CUDA graphs etc.) unless configured; every
    # engine on CPU is sized by what it needs (integration/vllm/memory.py).
    kwargs = engine_kwargs(resolved.path, dtype, qrhead=retriever,
                           kv_cache_sequences=cfg.kv_cache_sequences, **overrides)
    kwargs["served_model_name"] = names
    return kwargs


def start_engine(cfg: EngineConfig, resolved, retriever: bool, names: list[str]):
    """(AsyncLLM, its AsyncEngineArgs) for one engine config."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM
    from qrhead_vllm.integration.vllm.engine_args import engine_env

    os.environ.update(cfg.env)  # before vLLM reads its env and spawns the engine core
    engine_args = AsyncEngineArgs(**engine_kwargs_for(cfg, resolved, retriever, names))
    with engine_env(cfg.tensor_parallel_size, qrhead=retriever):
        return AsyncLLM.from_engine_args(engine_args), engine_args


class QRHeadEngine:
    """One engine; ``roles`` says which of the generator / retriever methods it answers."""

    async def __init__(self, cfg: EngineConfig, roles: tuple[str, ...]):
        self.roles = tuple(roles)
        is_retriever = "retriever" in self.roles
        if is_retriever and not isinstance(cfg, RetrieverConfig):
            raise TypeError("the retriever role needs a RetrieverConfig")
        resolved = resolve_model(cfg.model)
        self.names = served_names(cfg, resolved.model_id)
        self.engine, engine_args = start_engine(cfg, resolved, is_retriever, self.names)
        self.retriever = self.app = None
        if is_retriever:
            from qrhead_vllm.integration.vllm.backend import AsyncVLLMBackend
            from qrhead_vllm.serve.retriever import Retriever
            backend = AsyncVLLMBackend(self.engine, resolved.path, resolved.model_id)
            self.retriever = Retriever(cfg, backend, self.names)
        if "generator" in self.roles:
            self.app = await build_openai_app(self.engine, vllm_args(engine_args, self.names))
        logger.info("engine %s ready: roles=%s", self.names[0], self.roles)

    async def info(self) -> dict[str, Any]:
        return {"names": self.names, "roles": self.roles,
                "max_model_len": self.engine.model_config.max_model_len}

    async def openai(self, method: str, path: str, query: str, headers: list[tuple[str, str]],
                     body: bytes) -> AsyncIterator[dict[str, Any] | bytes]:
        """Streamed: one HTTP request through vLLM's OpenAI app (see qrhead_vllm.serve.generator)."""
        if self.app is None:
            raise APIError(404, f"{path} is served by the generator; this engine only scores")
        async for item in call_asgi(self.app, method, path, query, headers, body):
            yield item

    async def rerank(self, req: RerankRequest) -> dict[str, Any] | APIError:
        return await self._scoring("rerank", req)

    async def retrieve(self, *args, **kwargs) -> dict[str, Any] | APIError:
        return await self._scoring("retrieve", *args, **kwargs)

    async def _scoring(self, method: str, *args, **kwargs) -> dict[str, Any] | APIError:
        """Client mistakes come back as a returned APIError: raising them would make Serve log
        a traceback per bad request; real failures still raise (and are logged)."""
        if self.retriever is None:
            return APIError(404, "this engine has no retriever role")
        try:
            return await getattr(self.retriever, method)(*args, **kwargs)
        except (APIError, QRHeadError) as e:
            return to_api_error(e)

    async def check_health(self) -> None:
        """Serve's health probe: an engine whose core died makes the replica restart."""
        await self.engine.check_health()

    def __del__(self):
        engine = getattr(self, "engine", None)
        if engine is not None:
            self.engine = None
            engine.shutdown()


QRHeadEngineDeployment = serve.deployment(QRHeadEngine, name="engine")
