"""The deployment that owns one vLLM AsyncLLM and plays the generator role, the retriever role,
or both (the CPU default: one SmolLM2 engine answers chat and scores documents).

The engine is started inside the replica's event loop (AsyncLLM binds to it). With the retriever
role it gets the QRHead hook: ``QRHEAD_ENABLED=1``, our worker extension and
``VLLM_CPU_OMP_THREADS_BIND`` over this engine's cores (``engine_args.engine_env``, with the
config's tensor_parallel_size); on CPU every engine is sized by what it needs
(``engine_args.engine_kwargs``). vLLM spawns its engine core and workers as child processes of
this replica; :meth:`__del__` shuts them down when Serve stops the replica, so nothing outlives
``serve.shutdown()``.
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
from qrhead_vllm.serve.health import ScoringProbe
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
    from vllm.v1.metrics.ray_wrappers import RayPrometheusStatLogger
    with engine_env(cfg.tensor_parallel_size, qrhead=retriever):
        # vLLM's metrics through Ray's metrics agent, beside Ray Serve's and QRHead's (the
        # way Ray Serve LLM starts its engines); GET /metrics shows all of them.
        engine = AsyncLLM.from_engine_args(engine_args, stat_loggers=[RayPrometheusStatLogger])
    return engine, engine_args


class QRHeadEngine:
    """One engine; ``roles`` says which of the generator / retriever methods it answers."""

    async def __init__(self, cfg: EngineConfig, roles: tuple[str, ...]):
        self.roles = tuple(roles)
        is_retriever = "retriever" in self.roles
        if is_retriever and not isinstance(cfg, RetrieverConfig):
            raise TypeError("the retriever role needs a RetrieverConfig")
        resolved = resolve_model(cfg.model)
        self.names = served_names(cfg, resolved.model_id)
        self.engine = self.sglang = None
        self.probe = ScoringProbe()      # check_health scores when no request did lately
        if cfg.engine == "sglang":
            await self._init_sglang(cfg, resolved)
            return
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

    async def _init_sglang(self, cfg: EngineConfig, resolved) -> None:
        """The retriever role on an SGLang engine (see qrhead_vllm.serve.sglang_engine); the
        generator role, if asked for, is not served: its routes answer 404 saying so."""
        from qrhead_vllm.serve.retriever import Retriever
        from qrhead_vllm.serve.sglang_engine import start_sglang_retriever
        self.sglang = start_sglang_retriever(cfg, resolved)
        self.retriever = Retriever(cfg, self.sglang, self.names)
        self.app = None
        logger.info("SGLang engine %s ready: retriever role", self.names[0])

    async def info(self) -> dict[str, Any]:
        max_len = (self.sglang.max_model_len if self.sglang is not None
                   else self.engine.model_config.max_model_len)
        return {"names": self.names, "roles": self.roles, "max_model_len": max_len}

    async def openai(self, method: str, path: str, query: str, headers: list[tuple[str, str]],
                     body: bytes) -> AsyncIterator[dict[str, Any] | bytes]:
        """Streamed: one HTTP request through vLLM's OpenAI app (see qrhead_vllm.serve.generator)."""
        if self.app is None:
            raise APIError(404, f"{path} is served by the generator; this engine only scores"
                           + (" (an SGLang retriever: configure a vLLM generator for the "
                              "OpenAI routes)" if self.sglang is not None else ""))
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
        self.probe.started()
        ok = False
        try:
            result, ok = await getattr(self.retriever, method)(*args, **kwargs), True
        except (APIError, QRHeadError) as e:
            return to_api_error(e)
        finally:
            self.probe.finished(ok)
        return result

    async def check_health(self) -> None:
        """Serve's health probe (and the ingress's /health): an engine whose core died, or a
        retriever that cannot score a tiny request (serve/health.py), fails it."""
        if self.sglang is not None:
            await self.sglang.stats_async()      # a round trip to the scheduler
        else:
            await self.engine.check_health()
        if self.retriever is not None:
            await self.probe.check(self.retriever.rerank)

    def __del__(self):
        engine = getattr(self, "engine", None)
        if engine is not None:
            self.engine = None
            engine.shutdown()
        backend = getattr(self, "sglang", None)
        if backend is not None:
            self.sglang = None
            backend.close()


QRHeadEngineDeployment = serve.deployment(QRHeadEngine, name="engine")
