"""/v1/rerank wire format (Cohere / vLLM / Jina) and its QRHead extension object.

Request::

    {"model": "smollm2-135m", "query": "...", "documents": ["...", {"text": "...", "title": "..."}],
     "top_n": 3, "return_documents": true,
     "qrhead": {"method": "icr", "calibrate": false, "per_head": true, "windowed": false}}

Response::

    {"id": "rerank-...", "model": "...", "results": [{"index": 2, "relevance_score": 0.41,
     "document": {"text": "..."}}], "usage": {"prompt_tokens": 812, "total_tokens": 812},
     "qrhead": {...}}          # only when the request had a "qrhead" object

Compatibility choices: unknown top-level fields that other rerank APIs define (``rank_fields``,
``max_chunks_per_doc``, ``truncate_prompt_tokens``, ...) are accepted and ignored, so existing
clients work unchanged; ``return_documents`` defaults to true (vLLM and Jina always return
them; Cohere clients that pass false get none). ``relevance_score`` is the QRHead score itself
(calibrated attention mass, may be negative), exactly what the offline ``QRHeadRanker`` gives.
Unlike vLLM, ``top_n: 0`` is rejected: omit ``top_n`` to get every document.
"""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from qrhead_vllm.results import RankedResults, to_document
from qrhead_vllm.serve.errors import APIError, validation_message
from qrhead_vllm.serve.scoring import ScoringFields

EXAMPLE = '{"model": "smollm2-135m", "query": "...", "documents": ["...", "..."], "top_n": 3}'


class QRHeadOptions(ScoringFields):
    """The one extension object of a rerank request: its scoring choices (method, heads,
    calibrate: serve/scoring.py) and what to return."""

    per_head: bool = Field(False, description="Return each head's score for every result.")
    windowed: bool = Field(False, description="Score documents that do not fit one prompt in "
                                              "windows instead of answering 400.")


class RerankRequest(BaseModel):
    """A rerank request after validation; ``documents`` normalised to ``{text, title?}``."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    query: str
    documents: list[dict[str, Any]]
    top_n: int | None = None
    return_documents: bool | None = None
    qrhead: QRHeadOptions | None = None

    @field_validator("query", mode="before")
    @classmethod
    def _query(cls, v: Any) -> str:
        if not isinstance(v, str) or not v.strip():
            raise ValueError("must be a non-empty string (the text to rank documents for)")
        return v

    @field_validator("documents", mode="before")
    @classmethod
    def _documents(cls, v: Any) -> list[dict[str, Any]]:
        if not isinstance(v, list) or not v:
            raise ValueError('must be a non-empty list of strings or {"text": "..."} objects')
        return [normalise_document(d, i) for i, d in enumerate(v)]

    @field_validator("top_n", mode="before")
    @classmethod
    def _top_n(cls, v: Any) -> int | None:
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"must be an integer, got {v!r}")
        if v <= 0:
            raise ValueError(f"must be >= 1, got {v} (omit top_n to get every document)")
        return v

    @field_validator("return_documents", mode="before")
    @classmethod
    def _bool(cls, v: Any) -> bool | None:
        if v is not None and not isinstance(v, bool):
            raise ValueError(f"must be true or false, got {v!r}")
        return v


def normalise_document(d: Any, i: int) -> dict[str, Any]:
    """Document ``i`` of a request as the wire object to echo back (``{"text": d}`` for a
    string), after checking it with the package's one document reader."""
    to_document(d, f"[{i}]", i)
    return {"text": d} if isinstance(d, str) else d


def parse_rerank(body: dict[str, Any]) -> RerankRequest:
    """Validate a decoded body; every problem becomes one 400 naming the field."""
    try:
        req = RerankRequest.model_validate(body)
    except ValidationError as e:
        raise APIError(400, f"{validation_message(e)}. Example body: {EXAMPLE}",
                       str(e.errors()[0]["loc"][0])) from None
    if req.top_n is not None and req.top_n > len(req.documents):
        raise APIError(400, f"top_n ({req.top_n}) is larger than the number of documents "
                            f"({len(req.documents)}); pass at most {len(req.documents)} or omit "
                            "top_n", "top_n")
    return req


def rerank_response(req: RerankRequest, ranked: RankedResults, model: str, prompt_tokens: int,
                    extension: dict[str, Any] | None) -> dict[str, Any]:
    """The wire response: best first, cut to ``top_n``, documents echoed unless turned off."""
    shown = ranked.results[: req.top_n] if req.top_n else ranked.results
    with_docs = req.return_documents is not False
    results = []
    for r in shown:
        item: dict[str, Any] = {"index": r.index, "relevance_score": r.score}
        if with_docs:
            item["document"] = req.documents[r.index]
        results.append(item)
    out: dict[str, Any] = {"id": f"rerank-{uuid.uuid4().hex}", "model": model,
                           "results": results,
                           "usage": {"prompt_tokens": prompt_tokens,
                                     "total_tokens": prompt_tokens}}
    if req.qrhead is not None and extension is not None:
        if req.qrhead.per_head and ranked.head_scores is not None:
            extension["head_scores"] = [[h[r.index] for h in ranked.head_scores] for r in shown]
        out["qrhead"] = extension
    return out
