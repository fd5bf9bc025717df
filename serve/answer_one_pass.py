"""/v1/answer's ``"mode": "one_pass"``: every passage in one prompt, one generation that
answers, scores the passages (its prefill) and cites them (its decode).

Where ``retrieve_then_answer`` prefills the passages twice (score them all, then generate from
the best ``top_k``), this sends the whole context as a chat with documents
(serve/chat_documents.py) to the engine that scores and generates: the model sees every passage
and the passages' scores and the answer's citations come from that one pass. The context must
fit one prompt of the retriever's model (else a 400 that names the other mode); the answer
comes from the retriever's model (``model`` must name it), with the scoring prompt's
instruction instead of ``rag.system_prompt``.

Response: the ``retrieve_then_answer`` shape (``passages``: the best ``top_k`` by score, with
their offsets; ``window`` is 0 and ``window_score`` the score: one prompt), plus ``"mode":
"one_pass"`` and ``citations`` (``[{start, end, text, document_indices, shares, tokens}]``,
``document_indices`` index the request's passages as ``passages[].index`` does), and
``timings: {first_token_s, generation_s}`` (no separate retrieval). Streamed: the
``answer.passages`` event (with ``timings: {first_token_s}``) once the first token is out, then
vLLM's chunks, then ``{"object": "answer.citations", "citations"}``, the ``answer.timings``
event and ``data: [DONE]``.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, AsyncIterator

from fastapi.responses import JSONResponse, Response, StreamingResponse

from qrhead_vllm.serve.answer import DONE, AnswerRequest, request_passages, sse, top_k
from qrhead_vllm.serve.args import QRHeadServeConfig
from qrhead_vllm.serve.chat_documents import ChatOptions, DocumentChat, sse_event
from qrhead_vllm.serve.errors import APIError
from qrhead_vllm.serve.scoring import request_options

def document_chat(req: AnswerRequest, cfg: QRHeadServeConfig,
                  passages: list[dict[str, Any]]) -> DocumentChat:
    """The chat with documents that answers ``req`` from every passage."""
    chat: dict[str, Any] = {"messages": [{"role": "user", "content": req.question}],
                            "max_tokens": req.max_tokens or cfg.rag.max_tokens,
                            "temperature": req.temperature, "stream": req.stream}
    if req.model is not None:
        chat["model"] = req.model
    fields = req.qrhead.model_dump() if req.qrhead else {}
    documents = [{"text": p["text"]} | ({"title": p["title"]} if p.get("title") else {})
                 for p in passages]
    return DocumentChat(req.question.strip(), documents, ChatOptions(**fields), chat)


def ranked_passages(extension: dict[str, Any], passages: list[dict[str, Any]], k: int
                    ) -> list[dict[str, Any]]:
    """The best ``k`` passages by their one-pass score, in /v1/answer's passage shape."""
    out = []
    for d in extension["documents"][:k]:
        p = passages[d["index"]]
        item = {"index": d["index"], "rank": d["rank"], "score": d["score"],
                "window_score": d["score"], "window": 0, "text": p["text"]}
        if p.get("title"):
            item["title"] = p["title"]
        out.append(item | {"start": p["start"], "end": p["end"]})
    return out


def retrieval_info(extension: dict[str, Any], passages: list[dict[str, Any]]) -> dict[str, Any]:
    skip = {"documents", "citations", "null_cached_tokens"}
    info = {k: v for k, v in extension.items() if k not in skip}
    return info | {"passages": len(passages), "windows": 1, "rescored": 0}


async def one_pass(req: AnswerRequest, upstream, cfg: QRHeadServeConfig) -> Response:
    """Answer, score and cite in one generation (module docstring)."""
    passages = request_passages(req, cfg.rag)
    k = top_k(req, cfg.rag, passages)
    started = time.perf_counter()
    try:
        start, chunks = await upstream.chat_documents(
            document_chat(req, cfg, passages), request_options(req.qrhead, cfg.retriever))
    except APIError as e:
        if e.type == "context_length_exceeded":
            raise APIError(400, f"{e.message}; mode one_pass needs the whole context in one "
                                "prompt: use mode retrieve_then_answer for longer contexts",
                           "context", e.type) from None
        raise
    if not req.stream:
        chat = json.loads(b"".join([c async for c in chunks]))
        ext = chat["qrhead"]
        return JSONResponse({
            "id": f"answer-{uuid.uuid4().hex}", "object": "answer", "mode": "one_pass",
            "model": chat.get("model"), "answer": chat["choices"][0]["message"]["content"],
            "passages": ranked_passages(ext, passages, k),
            "retrieval": retrieval_info(ext, passages), "citations": ext.get("citations", []),
            "timings": {"generation_s": round(time.perf_counter() - started, 4)},
            "usage": chat.get("usage")})
    return StreamingResponse(_events(chunks, passages, k, started),
                             media_type="text/event-stream")


async def _events(chunks: AsyncIterator[bytes], passages: list[dict[str, Any]], k: int,
                  started: float) -> AsyncIterator[bytes]:
    """The chat's SSE events in /v1/answer's stream shape (module docstring)."""
    timings: dict[str, float] = {}
    async for chunk in chunks:
        head, done, tail = chunk.partition(DONE)
        event = sse_event(head) if head.strip() else None
        ext = event.pop("qrhead", None) if event else None
        if ext and "documents" in ext:
            timings["first_token_s"] = round(time.perf_counter() - started, 4)
            yield sse({"object": "answer.passages", "passages": ranked_passages(ext, passages, k),
                       "retrieval": retrieval_info(ext, passages), "timings": dict(timings)})
        if ext and "citations" in ext:
            yield sse({"object": "answer.citations", "citations": ext["citations"]})
        elif ext:
            yield sse(event)
        elif head:
            yield head
        if done:
            timings["generation_s"] = round(time.perf_counter() - started, 4)
            yield sse({"object": "answer.timings", "timings": timings})
            yield done + tail
