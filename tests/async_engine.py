"""An ``AsyncVLLMBackend`` on its own ``AsyncLLM`` for an engine test module (the Serve app's
engine client: multiprocess engine core, the plugin loaded by the worker through its entry
point, as in production), started on the module's event loop. Import the fixtures into a test module to use them."""

from __future__ import annotations

import asyncio

import pytest


def start_async_backend(loop: asyncio.AbstractEventLoop, model: str = "smollm2-135m",
                        dtype: str = "float32", **overrides):
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    from qrhead_vllm.integration.vllm.backend import AsyncVLLMBackend
    from qrhead_vllm.integration.vllm.engine_args import engine_env, engine_kwargs
    from qrhead_vllm.models import resolve_model
    resolved = resolve_model(model)
    kwargs = engine_kwargs(resolved.path, dtype, **{"max_model_len": 4096,
                                                    "kv_cache_sequences": 4, **overrides})

    async def start():
        with engine_env():
            return AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))
    return AsyncVLLMBackend(loop.run_until_complete(start()), resolved.path, resolved.model_id)


@pytest.fixture(scope="module")
def engine_loop():
    """One event loop for a module: an AsyncLLM stays bound to the loop it first served."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def async_smollm2(engine_loop):
    """The bundled SmolLM2 in fp32 (equal to the port's numbers) behind AsyncVLLMBackend."""
    backend = start_async_backend(engine_loop)
    yield backend
    backend.close()
