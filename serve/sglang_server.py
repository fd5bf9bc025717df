"""The SGLang server (``retriever.engine: sglang``): an SGLang ``Engine`` with the QRHead hook
inside the replica, scored through
:class:`~qrhead_vllm.integration.sglang.backend.SGLangBackend` (async, in the replica's loop).
It plays the retriever role only; the OpenAI routes answer 404 unless a separate vLLM generator
is configured.

Why not Ray Serve LLM's ``SGLangServer``: it starts ``sglang.srt.ray.engine.RayEngine``, whose
scheduler actors ask for ``num_gpus=1`` on a placement group of ``{"GPU": n}`` bundles, so on a
CPU-only cluster they can never be placed (see docs/serving.md). This server starts the plain
``sglang.Engine`` instead; its scheduler is a child process of the replica, shut down with it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from typing import Any, AsyncIterator, Iterator

from qrhead_vllm.models import resolve_model
from qrhead_vllm.serve.args import EngineConfig
from qrhead_vllm.serve.errors import APIError
from qrhead_vllm.serve.resilience import ACCEPTED
from qrhead_vllm.serve.server import RetrieverMixin, check_roles, no_generator, served_names

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def signals_off_main_thread() -> Iterator[None]:
    """SGLang installs launch-phase signal handlers, which Python allows only on the main
    thread; a Serve replica constructs its deployment on the actor's event-loop thread. Ray
    Serve LLM's own SGLangServer does the same no-op there (sglang#18752)."""
    if threading.current_thread() is threading.main_thread():
        yield
        return
    original = signal.signal
    signal.signal = lambda sig, handler: signal.SIG_DFL
    try:
        yield
    finally:
        signal.signal = original


def start_backend(cfg: EngineConfig, resolved):
    """An :class:`SGLangBackend` over a hooked engine for one engine config."""
    from qrhead_vllm.integration.sglang.backend import SGLangBackend, start_engine
    os.environ.update(cfg.env)   # before SGLang reads its environment and spawns its scheduler
    overrides = cfg.engine_overrides()
    dtype = overrides.pop("dtype", cfg.dtype)
    with signals_off_main_thread():
        engine = start_engine(resolved.path, dtype, kv_cache_sequences=cfg.kv_cache_sequences,
                              **overrides)
    return SGLangBackend(resolved.path, resolved.model_id, dtype, engine=engine)


class SGLangServer(RetrieverMixin):
    """One hooked SGLang engine playing the retriever role."""

    backend = None

    async def __init__(self, cfg: EngineConfig, roles: tuple[str, ...]):
        check_roles(cfg, roles)
        resolved = resolve_model(cfg.model)
        self.names = served_names(cfg, resolved.model_id)
        self.backend = start_backend(cfg, resolved)
        self.start_retriever(cfg, self.backend, self.names)
        logger.info("SGLang engine %s ready: retriever role", self.names[0])

    async def openai(self, method: str, path: str, query: str, headers: list[tuple[str, str]],
                     body: bytes) -> AsyncIterator[dict[str, Any] | bytes]:
        """The generator role is not served here: a 404 that says what to configure."""
        yield ACCEPTED
        async for item in no_generator(path, " (an SGLang retriever: configure a vLLM "
                                             "generator for the OpenAI routes)"):
            yield item

    async def chat_documents(self, req, options) -> AsyncIterator[Any]:
        """Chat with documents is vLLM's only: a 501 that says why."""
        yield ACCEPTED
        yield APIError(501, "chat with documents is not available with engine: sglang: the "
                            "citations need attention captured while decoding, which only the "
                            "vLLM engine has; rank the documents with /v1/rerank, or serve "
                            "with engine: vllm")

    async def check_health(self) -> None:
        """Serve's health probe (and the ingress's /health): a round trip to the scheduler,
        then a retriever that cannot score a tiny request makes the replica restart."""
        await self.backend.stats_async()
        await self.check_retriever()

    def __del__(self):
        backend, self.backend = self.backend, None
        if backend is not None:
            backend.close()
