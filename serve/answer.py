"""/v1/answer: retrieve with the QRHead retriever, answer with the generator.

Request::

    {"question": "...", "context": "<long text>"            # or "passages": [str | {text, title}]
     "top_k": 3, "model": "<generator name>", "stream": false, "max_tokens": 256,
     "temperature": 0, "qrhead": {"heads": "default", "calibrate": true}}

The context is split at blank lines, then into passages of at most ``rag.passage_words`` words;
the retriever scores them (in windows when they do not fit its context, see serve/windows.py),
keeps the best ``top_k`` and the generator answers from them through vLLM's own
``/v1/chat/completions`` (so sampling options and errors are vLLM's). Response::

    {"id", "object": "answer", "model", "answer", "passages": [{index, rank, score, window_score,
     window, text, title?}], "retrieval": {heads, num_heads, calibrated, passages, windows,
     rescored, prompt_tokens}, "usage": <the generator's usage>}

With ``"stream": true`` the response is server-sent events: first one ``{"object":
"answer.passages", "passages", "retrieval"}`` event, then vLLM's ``chat.completion.chunk`` events
unchanged, then ``data: [DONE]``.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from qrhead_vllm.serve.args import RAGConfig
from qrhead_vllm.serve.errors import APIError, validation_message
from qrhead_vllm.serve.rerank import normalise_document

EXAMPLE = '{"question": "...", "context": "<long text>", "top_k": 3}'
PARAGRAPH = re.compile(r"\n\s*\n")


class AnswerOptions(BaseModel):
    """The QRHead extension object of an answer request."""

    model_config = ConfigDict(extra="forbid")

    heads: str | None = Field(None, description="Head set: 'default', 'all' or a shipped name.")
    calibrate: bool | None = Field(None, description="Subtract the null-query attention.")


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


def parse_answer(body: dict[str, Any]) -> AnswerRequest:
    try:
        return AnswerRequest.model_validate(body)
    except ValidationError as e:
        raise APIError(400, f"{validation_message(e)}. Example body: {EXAMPLE}") from None


def split_context(text: str, max_words: int) -> list[dict[str, Any]]:
    """Paragraphs (blank-line separated) as passages; longer ones cut every ``max_words``."""
    out = []
    for para in PARAGRAPH.split(text):
        words = para.split()
        if not words:
            continue
        if len(words) <= max_words:
            out.append({"text": para.strip()})
            continue
        out += [{"text": " ".join(words[i:i + max_words])}
                for i in range(0, len(words), max_words)]
    return out


def request_passages(req: AnswerRequest, rag: RAGConfig) -> list[dict[str, Any]]:
    passages = req.passages if req.passages is not None else split_context(req.context,
                                                                            rag.passage_words)
    if len(passages) > rag.max_passages:
        raise APIError(400, f"the context gives {len(passages)} passages, more than this "
                            f"server's limit of {rag.max_passages}; send a shorter context")
    return passages


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


def answer_response(chat: dict[str, Any], retrieved: dict[str, Any]) -> dict[str, Any]:
    """Non-streamed answer: the generator's text plus the cited passages and their scores."""
    return {"id": f"answer-{uuid.uuid4().hex}", "object": "answer", "model": chat.get("model"),
            "answer": chat["choices"][0]["message"]["content"],
            "passages": retrieved["passages"], "retrieval": retrieved["retrieval"],
            "usage": chat.get("usage")}


def passages_event(retrieved: dict[str, Any]) -> bytes:
    """The first server-sent event of a streamed answer."""
    event = {"object": "answer.passages", "passages": retrieved["passages"],
             "retrieval": retrieved["retrieval"]}
    return f"data: {json.dumps(event)}\n\n".encode()
