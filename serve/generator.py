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
import copy
import types
from typing import Any, AsyncIterator

from qrhead_vllm.serve.errors import APIError, client_error

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


# --- chat with documents (serve/chat_documents.py) ------------------------------------------

class CaptureClient:
    """The engine client vLLM's chat serving sees for one chat with documents: ``generate``
    starts the scoring prompt's generation with capture (the backend's ``generate_scored``)
    and keeps it, with the text it produced; everything else is the real engine client's."""

    def __init__(self, engine_client, backend, scoring, decode: bool):
        self._engine, self.backend, self.scoring, self.decode = engine_client, backend, \
            scoring, decode
        self.gen = None
        self.text = ""

    def __getattr__(self, name: str):
        return getattr(self._engine, name)

    def generate(self, engine_input, params, request_id, **_: Any):
        self.gen = self.backend.generate_scored(self.scoring.real, params, self.scoring.heads,
                                                null=self.scoring.null, decode=self.decode,
                                                request_id=request_id)
        return self._outputs()

    async def _outputs(self):
        async for out in self.gen:
            self.text += out.outputs[0].text if out.outputs else ""   # deltas or the final text
            yield out

    async def close(self) -> None:
        """Abort the generation and its null pass if still running, drop whatever capture
        results were not taken (the backend's aclose: idempotent)."""
        if self.gen is not None:
            await self.gen.aclose()


def scored_serving(serving_chat, client: CaptureClient, question: str):
    """vLLM's chat serving (``app.state.openai_serving_chat``) for one chat with documents: a
    shallow copy that renders the scoring prompt instead of the chat template and generates
    through ``client``. Everything else (sampling options, max_tokens from the prompt length,
    the response and stream formats, usage, errors) is vLLM's own code."""
    from vllm.inputs.engine import tokens_input

    chat = copy.copy(serving_chat)
    chat.engine_client = client

    async def render_chat_request(request):
        error = await chat._check_model(request)
        if error is not None:
            return error
        chat._preflight(request.n or 1)
        return ([{"role": "user", "content": question}],
                [tokens_input(list(client.scoring.real.token_ids))])

    chat.render_chat_request = render_chat_request
    return chat


async def chat_with_documents(serving_chat, retriever, req, options) -> AsyncIterator[Any]:
    """One chat with documents (a ``DocumentChat``, serve/chat_documents.py) through vLLM's
    chat serving: yields the APIError that refuses it, or ``{"status", "headers"}`` then the
    body (the chat.completion, or its SSE chunks) with the ``qrhead`` object."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionResponse
    from vllm.entrypoints.serve.engine.protocol import ErrorResponse

    from qrhead_vllm.serve.chat_documents import stream_with_extension, with_extension
    try:
        answer, chat, request = await _prepare_chat(serving_chat, retriever, req, options)
    except Exception as e:                      # noqa: BLE001 - re-raised unless a 4xx
        yield _refusal(serving_chat, e)
        return
    cite = req.options.citations
    try:
        try:
            result = await chat.create_chat_completion(request)
        except Exception as e:                  # noqa: BLE001 - re-raised unless a 4xx
            yield _refusal(serving_chat, e)
            return
        if isinstance(result, ErrorResponse):
            yield _api_error(result)
        elif isinstance(result, ChatCompletionResponse):
            extension = await answer.scores()
            if cite:
                extension = extension | {"citations": await answer.citations()}
            yield {"status": 200, "headers": [("content-type", "application/json")]}
            yield with_extension(result.model_dump(), extension)
        else:
            yield {"status": 200, "headers": [("content-type", "text/event-stream")]}
            cited = (answer.closed_citations, answer.citations) if cite else (None, None)
            async for chunk in stream_with_extension(result, answer.scores, *cited):
                yield chunk
    finally:
        await answer.client.close()


async def _prepare_chat(serving_chat, retriever, req, options):
    """(ScoredAnswer, vLLM's chat serving for it, vLLM's validated request) of a request with
    its ScoringOptions (serve/scoring.py)."""
    from pydantic import ValidationError
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    from qrhead_vllm.serve.chat_documents import ScoredAnswer
    from qrhead_vllm.serve.errors import validation_message
    try:
        request = ChatCompletionRequest.model_validate(req.chat)
    except ValidationError as e:
        raise APIError(400, validation_message(e)) from None
    if (request.n or 1) != 1 or request.use_beam_search:
        raise APIError(400, "with documents, n must be 1 and use_beam_search false: the "
                            "scores and citations are those of one generation", "n")
    if len(req.documents) > retriever.cfg.max_documents:
        raise APIError(400, f"{len(req.documents)} documents is more than this server's limit "
                            f"of {retriever.cfg.max_documents} per request", "documents")
    ranker = retriever.ranker(options)
    _, scoring = await asyncio.to_thread(ranker.prepare, req.question, req.documents)
    client = CaptureClient(serving_chat.engine_client, ranker.backend, scoring,
                           decode=req.options.citations)
    answer = ScoredAnswer(ranker, scoring, retriever.head_set_info(ranker, req.options.heads),
                          client)
    return answer, scored_serving(serving_chat, client, req.question), request


def _refusal(serving_chat, exc: Exception) -> APIError:
    """The 4xx for what refused a chat with documents before it started: ours, or vLLM's own
    mapping of its exceptions (a VLLMValidationError, a ValueError ...); anything vLLM would
    answer with a 5xx is raised."""
    refused = client_error(exc)
    if refused is not None:
        return refused
    error = serving_chat.create_error_response(exc)
    if error.error.code >= 500:
        raise exc
    return _api_error(error)


def _api_error(response) -> APIError:
    """vLLM's ErrorResponse as our APIError (same fields)."""
    e = response.error
    return APIError(e.code, e.message, e.param, e.type)
