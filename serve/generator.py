"""The generator role: vLLM's own OpenAI server app on our AsyncLLM, called over a Ray handle.

We do not re-implement any OpenAI semantics. vLLM's ``build_app`` + ``init_app_state`` (the
functions ``vllm serve`` and Ray Serve LLM use) build the FastAPI app with every route,
validation rule, error shape and streaming format of vLLM 0.32, bound to the engine we started.
The ingress forwards the raw HTTP request (method, path, headers, body) across a Ray handle and
:func:`call_asgi` runs it through that app, yielding the response start and body chunks back as
they are produced, so streaming stays streaming.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import types
from typing import Any, AsyncIterator

# Hop-by-hop or length headers: the ingress re-frames the body, so these must not be copied.
DROP_HEADERS = {"content-length", "transfer-encoding", "connection", "keep-alive"}


def vllm_args(engine_args, served_names: list[str]) -> argparse.Namespace:
    """The flat Namespace vLLM's app expects: frontend defaults + our engine arguments."""
    from vllm.entrypoints.launchers.cli_args import FrontendArgs
    args = argparse.Namespace(**(vars(FrontendArgs()) | vars(engine_args)))
    args.served_model_name = served_names
    return args


async def build_openai_app(engine, args: argparse.Namespace):
    """vLLM's FastAPI app with its serving state bound to ``engine``."""
    from vllm.entrypoints.launchers.api_server.app_state import init_app_state
    from vllm.entrypoints.launchers.app import build_app
    tasks = tuple(await engine.get_supported_tasks())
    app = build_app(args, supported_tasks=tasks, model_config=engine.model_config)
    await init_app_state(engine, app.state, args, supported_tasks=tasks)
    # vLLM's engine-error handler flips `should_exit` on the uvicorn server it normally runs
    # under; Serve restarts unhealthy replicas instead, but the attribute read must succeed.
    app.state.server = types.SimpleNamespace()
    return app


async def call_asgi(app, method: str, path: str, query: str, headers: list[tuple[str, str]],
                    body: bytes) -> AsyncIterator[dict[str, Any] | bytes]:
    """Run one HTTP request through an ASGI app: yields ``{"status", "headers"}``, then bytes.

    ``receive`` hands over the body once and then blocks until we are done or cancelled, which
    is what vLLM's disconnect watchers expect of a client that stays connected. Cancelling this
    generator (the client went away) cancels the request inside vLLM too.
    """
    messages: asyncio.Queue = asyncio.Queue()
    finished = asyncio.Event()
    delivered = False

    async def receive():
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await finished.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        await messages.put(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": query.encode(), "root_path": "",
             "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
             "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 80)}
    task = asyncio.create_task(app(scope, receive, send))
    task.add_done_callback(lambda _: messages.put_nowait(None))
    try:
        while (message := await messages.get()) is not None:
            if message["type"] == "http.response.start":
                yield {"status": message["status"],
                       "headers": [(k.decode("latin-1"), v.decode("latin-1"))
                                   for k, v in message.get("headers", [])
                                   if k.decode("latin-1").lower() not in DROP_HEADERS]}
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    yield message["body"]
                if not message.get("more_body", False):
                    break
        if task.done() and task.exception() is not None:
            raise task.exception()
    finally:
        finished.set()
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
