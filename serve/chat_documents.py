"""``POST /v1/chat/completions`` with ``documents``: the answer, each document's relevance and
the answer's citations, from one generation.

Request: an OpenAI chat request (every vLLM sampling option: ``max_tokens``, ``temperature``,
``stop``, ``seed``, ``stream``, ``stream_options`` ...) plus::

    "documents": ["...", {"text": "...", "title": "..."}],      # the shapes /v1/rerank takes
    "qrhead": {"method": "qrhead", "heads": "default", "calibrate": true,     # optional
               "citations": true}

The question is the one user message. The prompt is the scoring prompt ``/v1/rerank`` builds
for that question (qrhead_vllm/core/prompt.py: the documents, the instruction, ``Query:
<question>``, the chat template's assistant header), so the model answers right after it and
the document scores equal ``/v1/rerank``'s for the same documents, question and heads. System
messages and earlier turns have no place in that prompt without changing the scores: they are
refused (400, saying to fold what they say into the question, or to send the chat without
documents).

Response: vLLM's ``chat.completion`` (or its ``chat.completion.chunk`` stream) with one more
top-level object, ``qrhead``::

    {"documents": [{"index": 2, "score": 0.41, "rank": 1}, ...],     # best first
     "heads": "default", "head_set": "...", "num_heads": 16, "calibrated": true,
     "prompt_tokens": 812,                                           # real + null prefill
     "citations": [{"start", "end", "text", "document_indices", "shares", "tokens"}]}

Streamed: the first chunk carries everything but the citations; each sentence's citation
follows in a chunk with ``choices: []`` and ``qrhead: {"citations": [...]}`` once the sentence
closes (the last one's before ``data: [DONE]``); together they are the non-streamed citations.
Citations (qrhead_vllm/core/citations.py) come from the selected heads' attention of each
generated token over the documents, captured while decoding; ``"citations": false`` turns that
capture off.

The ingress parses and checks the request (:func:`parse_document_chat`, 400s naming the
field); the engine server builds the prompt and generates through a copy of vLLM's own chat
serving (serve/generator.py:chat_with_documents). Only a vLLM engine that plays both roles
(``generator: null``) can do it: elsewhere the engine answers 501 saying why.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from pydantic import Field, ValidationError

from qrhead_vllm.serve.answer import DONE, sse
from qrhead_vllm.serve.errors import APIError, validation_message
from qrhead_vllm.serve.rerank import normalise_document
from qrhead_vllm.serve.scoring import ScoringFields

logger = logging.getLogger(__name__)
CHAT_PATH = "v1/chat/completions"
EXAMPLE = ('{"model": "smollm2-135m", "messages": [{"role": "user", "content": "Who ...?"}], '
           '"documents": ["...", {"title": "...", "text": "..."}]}')


class ChatOptions(ScoringFields):
    """The QRHead extension object of a chat request with documents: the scoring choices of
    /v1/rerank's (serve/scoring.py), and whether to cite."""

    citations: bool = Field(True, description="Capture attention while decoding and cite.")


@dataclass(frozen=True)
class DocumentChat:
    """A chat request with documents after the ingress's checks (crosses the Ray handle)."""

    question: str
    documents: list[dict[str, Any]]
    options: ChatOptions
    chat: dict[str, Any] = field(repr=False)    # the body without documents/qrhead, for vLLM


def wants_documents(method: str, path: str, raw: bytes) -> dict[str, Any] | None:
    """The decoded body of a chat request that carries ``documents`` (not null), else None:
    every other request goes to vLLM's app unchanged (it answers malformed JSON itself)."""
    if method != "POST" or path.strip("/") != CHAT_PATH or b'"documents"' not in raw:
        return None
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return body if isinstance(body, dict) and body.get("documents") is not None else None


def parse_document_chat(body: dict[str, Any]) -> DocumentChat:
    """Check the documents, the messages and the options; a 400 naming the field otherwise."""
    chat = dict(body)
    docs = chat.pop("documents")
    if not isinstance(docs, list) or not docs:
        raise APIError(400, 'documents must be a non-empty list of strings or {"text": "..."} '
                            f"objects. Example body: {EXAMPLE}", "documents")
    try:
        documents = [normalise_document(d, i) for i, d in enumerate(docs)]
    except ValueError as e:
        raise APIError(400, f"documents{e}", "documents") from None
    try:
        options = ChatOptions.model_validate(chat.pop("qrhead", None) or {})
    except ValidationError as e:
        raise APIError(400, f"qrhead: {validation_message(e)}", "qrhead") from None
    return DocumentChat(question_of(chat.get("messages")), documents, options, chat)


def question_of(messages: Any) -> str:
    """The text of the one user message (see the module docstring for why only one)."""
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "messages must be a list holding one user message (the question); "
                            f"example body: {EXAMPLE}", "messages")
    if len(messages) > 1 or not isinstance(messages[0], dict) or \
            messages[0].get("role") != "user":
        roles = [m.get("role") if isinstance(m, dict) else type(m).__name__ for m in messages]
        raise APIError(400, f"with documents, messages must be exactly one user message (the "
                            f"question), got roles {roles}: the prompt is the documents, then "
                            "the question (the scores need that layout), so system messages and "
                            "earlier turns have no place in it. Fold what they say into the "
                            "question, or send the chat without documents", "messages")
    text = message_text(messages[0].get("content"))
    if not text.strip():
        raise APIError(400, "the user message (the question) must have non-empty text",
                       "messages")
    return text


def message_text(content: Any) -> str:
    """A message's text: a string, or the text parts of a content list (nothing else)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "\n".join(p["text"] for p in content)
    raise APIError(400, "with documents, the user message's content must be text (a string or "
                        "text parts)", "messages")


# --- the response's extension object --------------------------------------------------------

def documents_extension(scores: list[float], info: dict[str, Any],
                        prompt_tokens: int) -> dict[str, Any]:
    """The ``qrhead`` object of the scores: documents best first, the head set, the tokens
    prefilled for them (real and null prompts)."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])    # stable: ties by index
    ranked = [{"index": i, "score": scores[i], "rank": r} for r, i in enumerate(order, start=1)]
    return {"documents": ranked, **info, "prompt_tokens": prompt_tokens}


def with_extension(response: dict[str, Any], extension: dict[str, Any]) -> bytes:
    """A non-streamed chat.completion with the ``qrhead`` object."""
    return json.dumps(response | {"qrhead": extension}).encode()


def first_chunk_with(chunk: str, extension: dict[str, Any]) -> bytes:
    """vLLM's first SSE chunk with the ``qrhead`` object added (an error event stays as is)."""
    event = sse_event(chunk)
    if event is None or "choices" not in event:
        return chunk.encode()
    return sse(event | {"qrhead": extension})


def citations_chunk(template: dict[str, Any], citations: list[dict[str, Any]]) -> bytes:
    """The chunk that carries the citations: the stream's id/model/created, no choices."""
    keep = {k: template[k] for k in ("id", "object", "created", "model") if k in template}
    return sse(keep | {"choices": [], "qrhead": {"citations": citations}})


async def stream_with_extension(chunks: AsyncIterator[str], scores, closed=None, rest=None
                                ) -> AsyncIterator[bytes]:
    """vLLM's SSE chunks (strings) with the scores in the first event and the citations in
    events of their own: ``await closed()`` after each chunk gives the citations of the
    sentences that chunk closed (usually none), ``await rest()`` before ``data: [DONE]`` the
    remaining ones. ``closed``/``rest`` None: no citations."""
    first: dict[str, Any] | None = None
    async for chunk in chunks:
        if first is None:
            first = sse_event(chunk) or {}
            try:
                yield first_chunk_with(chunk, await scores())
            except Exception as e:              # noqa: BLE001 - the answer still streams
                yield chunk.encode() + failed("scores", e)
                rest = None
            continue
        head, done, tail = chunk.encode().partition(DONE)
        if head:
            yield head
        try:
            new = None if rest is None else await (rest() if done else closed())
        except Exception as e:                  # noqa: BLE001 - the answer still streams
            new, rest = None, None              # no more tries
            yield failed("citations", e)
        if new:
            yield citations_chunk(first, new)
        if done:
            yield done + tail


class ScoredAnswer:
    """One chat with documents on the engine side: its prepared scoring prompt, then the
    scores (after the first output) and the citations (after the last) of its generation.

    ``client.gen`` is the backend's scored generation (``prefill()``, ``decode_mass()``), set
    once the generation starts; ``client.text`` the answer generated so far."""

    def __init__(self, ranker, scoring, info: dict[str, Any], client):
        self.ranker, self.scoring, self.info, self.client = ranker, scoring, info, client
        self._scores: list[float] | None = None
        self._extension: dict[str, Any] | None = None
        self._closed = 0        # sentences closed when the stream last asked
        self._given = 0         # citations given so far

    async def scores(self) -> dict[str, Any]:
        """The ``qrhead`` object of the document scores (computed once)."""
        if self._extension is None:
            mass = await self.client.gen.prefill()
            scores = self.ranker.scorer.scores(mass, self.scoring.real.doc_spans).tolist()
            self._scores = scores
            self._extension = documents_extension(scores, self.info, self.scoring.prompt_tokens)
            if mass.null_cached_tokens is not None:
                self._extension["null_cached_tokens"] = mass.null_cached_tokens
        return self._extension

    async def citations(self) -> list[dict[str, Any]]:
        """The citations not yet given (all of them unless :meth:`closed_citations` gave
        some), once the generation ended."""
        return await self._new_citations(await self.client.gen.decode_mass(), None)

    async def closed_citations(self) -> list[dict[str, Any]]:
        """Mid-stream: the citations of the sentences closed since the last call (none
        without a new one, and then no call to the engine)."""
        from qrhead_vllm.core.citations import closed_sentences    # torch: engine side only
        if closed_sentences(self.client.text) <= self._closed:
            return []
        self._closed = closed_sentences(self.client.text)
        return await self._new_citations(await self.client.gen.decode_mass_so_far(),
                                          self._closed)

    async def _new_citations(self, decoded, sentences: int | None) -> list[dict[str, Any]]:
        import torch

        from qrhead_vllm.core.citations import cite, token_offsets
        await self.scores()
        text = self.client.text
        offsets = token_offsets(self.ranker.backend.tokenizer, decoded.token_ids, text)
        cited = cite(decoded.mass, offsets, text, torch.tensor(self._scores),
                     sentences=sentences)
        new, self._given = cited[self._given:], len(cited)
        return [c.as_dict() for c in new]


def failed(what: str, exc: Exception) -> bytes:
    """An error event in vLLM's stream shape for a part of the extension that failed while the
    answer streams on (logged with its traceback)."""
    logger.error("%s failed mid-stream", what, exc_info=exc)
    return sse({"error": {"message": f"{what} failed: {type(exc).__name__}: {exc}",
                          "type": "internal_error", "param": None, "code": 500}})


def sse_event(chunk: str | bytes) -> dict[str, Any] | None:
    """The JSON object of one ``data: {...}`` SSE event, else None (``[DONE]``, an error)."""
    text = chunk.decode() if isinstance(chunk, bytes) else chunk
    try:
        event = json.loads(text.strip().removeprefix("data: "))
    except ValueError:
        return None
    return event if isinstance(event, dict) else None
