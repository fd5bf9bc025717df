"""/v1/answer's orchestration: what the ingress does with a parsed answer request.

One flow per answer mode (:data:`FLOWS`, keyed by ``AnswerRequest.mode``; the names are
``serve/answer.py:ANSWER_MODES``). ``retrieve_then_answer``: the retriever scores
the passages and keeps the best ``top_k`` (one engine call), then the generator answers from
them through vLLM's ``/v1/chat/completions`` (a second prefill, of the kept passages only),
streamed or not. ``one_pass`` (serve/answer_one_pass.py): every passage in one chat with
documents, whose generation answers, scores and cites. A new mode is a coroutine ``(request, upstream, cfg) -> Response`` and one
entry in each of the two places. The wire format and its pure pieces are serve/answer.py's; the
engine calls are the ingress's ``Upstream`` (serve/ingress.py).
"""

from __future__ import annotations

import json
import time
from typing import Any, AsyncIterator, Awaitable, Callable

from fastapi.responses import JSONResponse, Response, StreamingResponse

from qrhead_vllm.serve.answer import (ANSWER_MODES, AnswerRequest, Retrieval, answer_response,
                                     chat_body, passages_event, request_passages, sse, top_k,
                                     with_offsets, with_trailer)
from qrhead_vllm.serve.answer_one_pass import one_pass
from qrhead_vllm.serve.args import QRHeadServeConfig
from qrhead_vllm.serve.scoring import request_options

CHAT_PATH = "/v1/chat/completions"
JSON_HEADERS = [("content-type", "application/json")]

Flow = Callable[[AnswerRequest, Any, QRHeadServeConfig], Awaitable[Response]]


async def answer(req: AnswerRequest, upstream, cfg: QRHeadServeConfig) -> Response:
    """The response to one answer request, by its mode."""
    return await FLOWS[req.mode](req, upstream, cfg)


async def retrieve_then_answer(req: AnswerRequest, upstream, cfg: QRHeadServeConfig
                               ) -> Response:
    """Retrieve the best passages, then generate from them (module docstring)."""
    passages = request_passages(req, cfg.rag)
    asked = req.qrhead.heads if req.qrhead else None
    retrieval = Retrieval(req.question, passages, top_k(req, cfg.rag, passages),
                          cfg.rag.rescore_candidates, asked)
    options = request_options(req.qrhead, cfg.retriever)
    started = time.perf_counter()
    retrieved = with_offsets(await upstream.retrieve(retrieval, options), passages)
    generating = time.perf_counter()
    timings = {"retrieval_s": round(generating - started, 4)}
    body = json.dumps(chat_body(req, cfg.rag, retrieved["passages"])).encode()
    start, chunks = await upstream.open("POST", CHAT_PATH, "", JSON_HEADERS, body)
    if start["status"] != 200:  # vLLM's own error (e.g. unknown generator model)
        return Response(await collect(chunks), start["status"], dict(start["headers"]))

    def finished() -> dict[str, float]:
        return timings | {"generation_s": round(time.perf_counter() - generating, 4)}

    if not req.stream:
        chat = json.loads(await collect(chunks))
        return JSONResponse(answer_response(chat, retrieved, finished()))

    async def events() -> AsyncIterator[bytes]:
        yield passages_event(retrieved, timings)
        async for chunk in with_trailer(chunks, lambda: sse(
                {"object": "answer.timings", "timings": finished()})):
            yield chunk

    return StreamingResponse(events(), media_type="text/event-stream")


async def collect(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([c async for c in chunks])


FLOWS: dict[str, Flow] = {"retrieve_then_answer": retrieve_then_answer, "one_pass": one_pass}
assert tuple(FLOWS) == ANSWER_MODES, "serve/answer.py:ANSWER_MODES names every flow here"
