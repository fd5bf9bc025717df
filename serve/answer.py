"""/v1/answer: retrieve with the QRHead retriever, answer with the generator.

Request::

    {"question": "...", "context": "<long text>"            # or "passages": [str | {text, title}]
     "top_k": 3, "model": "<generator name>", "stream": false, "max_tokens": 256,
     "temperature": 0, "mode": "retrieve_then_answer",
     "qrhead": {"method": "qrhead", "heads": "default", "calibrate": true}}

The context is split at blank lines, then into passages of at most ``rag.passage_words`` words;
the retriever scores them (in windows when they do not fit its context, see serve/windows.py),
keeps the best ``top_k`` and the generator answers from them through vLLM's own
``/v1/chat/completions`` (so sampling options and errors are vLLM's). Response::

    {"id", "object": "answer", "model", "answer", "passages": [{index, rank, score, window_score,
     window, text, title?, start, end}], "retrieval": {method, heads, head_set, num_heads,
     calibrated, passages, windows, rescored, prompt_tokens},
     "timings": {retrieval_s, generation_s}, "usage": <the generator's usage>}

Offsets: with ``context``, ``start``/``end`` are character offsets into the request's
``context`` string, so ``context[start:end] == text`` (a passage is a paragraph, or a run of
``passage_words`` words of one, cut exactly as it stands in the context). With ``passages`` the
server splits nothing: ``index`` is the position in the request's list and ``start``/``end`` are
``0`` and the length of that passage's text (``passages[index].text[start:end] == text``).

With ``"stream": true`` the response is server-sent events: first one ``{"object":
"answer.passages", "passages", "retrieval", "timings": {retrieval_s}}`` event, then vLLM's
``chat.completion.chunk`` events unchanged, then one ``{"object": "answer.timings", "timings":
{retrieval_s, generation_s}}`` event, then ``data: [DONE]``.

Bad input is a 400 that says what to fix: an empty context or question, ``top_k`` over the
number of passages, a passage longer than the retriever's window (split it; a ``context`` is
split for you, so only ``passages`` can hit this).

``"mode": "one_pass"`` answers from every passage in one prompt instead: the retriever's engine
generates from the scoring prompt, the passages' scores come from that generation's prefill and
its ``citations`` from its decode, so no passage is prefilled twice; its response and stream
are described in serve/answer_one_pass.py (this shape plus ``"mode"`` and ``citations``).

The orchestration (retrieve, then generate; streamed or not) is serve/answer_flow.py's (one
flow per mode); this module is the wire format and its pure pieces.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from qrhead_vllm.serve.args import RAGConfig
from qrhead_vllm.serve.errors import APIError, validation_message
from qrhead_vllm.serve.rerank import normalise_document
from qrhead_vllm.serve.scoring import ScoringFields

EXAMPLE = '{"question": "...", "context": "<long text>", "top_k": 3}'
# How an answer is made; each has its flow in serve/answer_flow.py:FLOWS.
ANSWER_MODES = ("retrieve_then_answer", "one_pass")
AnswerMode = Literal[ANSWER_MODES]          # type: ignore[valid-type]
PARAGRAPH = re.compile(r"\n\s*\n")
WORD = re.compile(r"\S+")
DONE = b"data: [DONE]"


class AnswerOptions(ScoringFields):
    """The QRHead extension object of an answer request: its scoring choices."""


class AnswerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str
    context: str | None = None
    passages: list[dict[str, Any]] | None = None
    top_k: int | None = Field(None, gt=0)
    model: str | None = None
    stream: bool = False
    max_tokens: int | None = Field(None, gt=0)
    temperature: float = Field(0.0, ge=0)
    mode: AnswerMode = ANSWER_MODES[0]
    qrhead: AnswerOptions | None = None

    @field_validator("question", mode="before")
    @classmethod
    def _question(cls, v: Any) -> str:
        if not isinstance(v, str) or not v.strip():
            raise ValueError("must be a non-empty string")
        return v

    @field_validator("passages", mode="before")
    @classmethod
    def _passages(cls, v: Any) -> list[dict[str, Any]] | None:
        if v is None:
            return None
        if not isinstance(v, list) or not v:
            raise ValueError('must be a non-empty list of strings or {"text": "..."} objects')
        return [normalise_document(d, i) for i, d in enumerate(v)]

    @model_validator(mode="after")
    def _one_source(self) -> "AnswerRequest":
        if (self.context is None) == (self.passages is None):
            raise ValueError("send exactly one of 'context' (a long text we split) or "
                             "'passages' (a list you split yourself)")
        if self.context is not None and not self.context.strip():
            raise ValueError("context must not be empty")
        return self


@dataclass(frozen=True)
class Retrieval:
    """The retrieval half of one answer request, as the ingress sends it to the retriever
    (with the request's ScoringOptions beside it)."""

    question: str
    passages: list[dict[str, Any]]
    top_k: int
    rescore_candidates: int
    heads: str | None = None            # the head-set name the request gave (reported back)


def parse_answer(body: dict[str, Any]) -> AnswerRequest:
    try:
        return AnswerRequest.model_validate(body)
    except ValidationError as e:
        raise APIError(400, f"{validation_message(e)}. Example body: {EXAMPLE}") from None


def split_context(text: str, max_words: int) -> list[dict[str, Any]]:
    """Paragraphs (blank-line separated) as passages, longer ones cut every ``max_words`` words;
    each with its ``start``/``end`` character offsets (``text[start:end]`` is the passage)."""
    out = []
    starts = [0] + [m.end() for m in PARAGRAPH.finditer(text)]
    ends = [m.start() for m in PARAGRAPH.finditer(text)] + [len(text)]
    for lo, hi in zip(starts, ends):
        words = list(WORD.finditer(text, lo, hi))
        for i in range(0, len(words), max_words):
            chunk = words[i:i + max_words]
            start, end = chunk[0].start(), chunk[-1].end()
            out.append({"text": text[start:end], "start": start, "end": end})
    return out


def request_passages(req: AnswerRequest, rag: RAGConfig) -> list[dict[str, Any]]:
    """The passages to retrieve from, each with its offsets (see the module docstring)."""
    if req.passages is not None:
        passages = [p | {"start": 0, "end": len(p["text"])} for p in req.passages]
    else:
        passages = split_context(req.context, rag.passage_words)
    if len(passages) > rag.max_passages:
        raise APIError(400, f"the context gives {len(passages)} passages, more than this "
                            f"server's limit of {rag.max_passages}; send a shorter context")
    if req.top_k is not None and req.top_k > len(passages):
        source = "context splits into" if req.context is not None else "request gives"
        raise APIError(400, f"top_k ({req.top_k}) is more than the {len(passages)} passages the "
                            f"{source}; pass at most {len(passages)} or omit top_k", "top_k")
    return passages


def top_k(req: AnswerRequest, rag: RAGConfig, passages: list[dict[str, Any]]) -> int:
    """The request's top_k, else the server default capped at the number of passages."""
    return req.top_k or min(rag.top_k, len(passages))


def with_offsets(retrieved: dict[str, Any], passages: list[dict[str, Any]]) -> dict[str, Any]:
    """The retriever's cited passages with the ``start``/``end`` of the passage they cite."""
    for p in retrieved["passages"]:
        p["start"], p["end"] = passages[p["index"]]["start"], passages[p["index"]]["end"]
    return retrieved


def chat_body(req: AnswerRequest, rag: RAGConfig, cited: list[dict[str, Any]]) -> dict[str, Any]:
    """The /v1/chat/completions request that asks the generator to answer from ``cited``."""
    blocks = [f"[{p['rank']}] " + (f"{p['title']}: " if p.get("title") else "") + p["text"]
              for p in cited]
    user = "Passages:\n" + "\n\n".join(blocks) + f"\n\nQuestion: {req.question.strip()}"
    body = {"messages": [{"role": "system", "content": rag.system_prompt},
                         {"role": "user", "content": user}],
            "max_tokens": req.max_tokens or rag.max_tokens, "temperature": req.temperature,
            "stream": req.stream}
    if req.model is not None:
        body["model"] = req.model
    return body


def answer_response(chat: dict[str, Any], retrieved: dict[str, Any],
                    timings: dict[str, float]) -> dict[str, Any]:
    """Non-streamed answer: the generator's text, the cited passages, their scores and
    offsets, and how long retrieval and generation took."""
    return {"id": f"answer-{uuid.uuid4().hex}", "object": "answer", "model": chat.get("model"),
            "answer": chat["choices"][0]["message"]["content"],
            "passages": retrieved["passages"], "retrieval": retrieved["retrieval"],
            "timings": timings, "usage": chat.get("usage")}


def passages_event(retrieved: dict[str, Any], timings: dict[str, float]) -> bytes:
    """The first server-sent event of a streamed answer."""
    return sse({"object": "answer.passages", "passages": retrieved["passages"],
                "retrieval": retrieved["retrieval"], "timings": timings})


def sse(event: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(event)}\n\n".encode()


async def with_trailer(chunks: AsyncIterator[bytes], trailer: Callable[[], bytes]
                       ) -> AsyncIterator[bytes]:
    """vLLM's SSE chunks with ``trailer()`` sent just before its final ``data: [DONE]``
    (called then, so it can report how long the stream took)."""
    async for chunk in chunks:
        head, done, tail = chunk.partition(DONE)
        if not done:
            yield chunk
            continue
        if head:
            yield head
        yield trailer()
        yield done + tail
