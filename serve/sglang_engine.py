"""The retriever role on SGLang (``retriever.engine: sglang``): an SGLang ``Engine`` with the
QRHead hook inside the engine deployment's replica, scored through
:class:`~qrhead_vllm.integration.sglang.backend.SGLangBackend` (async, in the replica's loop).

Why not Ray Serve LLM's ``SGLangServer``: it starts ``sglang.srt.ray.engine.RayEngine``, whose
scheduler actors ask for ``num_gpus=1`` on a placement group of ``{"GPU": n}`` bundles, so on a
CPU-only cluster they can never be placed (see docs/serving.md). This module starts the plain
``sglang.Engine`` instead; its scheduler is a child process of the replica, shut down with it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Iterator

from qrhead_vllm.serve.args import EngineConfig


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


def start_sglang_retriever(cfg: EngineConfig, resolved):
    """An :class:`SGLangBackend` over a hooked engine for one engine config."""
    from qrhead_vllm.integration.sglang.backend import SGLangBackend, start_engine
    os.environ.update(cfg.env)   # before SGLang reads its environment and spawns its scheduler
    overrides = cfg.engine_overrides()
    dtype = overrides.pop("dtype", cfg.dtype)
    with signals_off_main_thread():
        engine = start_engine(resolved.path, dtype, kv_cache_sequences=cfg.kv_cache_sequences,
                              **overrides)
    return SGLangBackend(resolved.path, resolved.model_id, dtype, engine=engine)
