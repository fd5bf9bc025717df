"""QRHeadRanker: one noun, one verb, one result type.

    ranker = QRHeadRanker()                       # bundled SmolLM2 + its detected heads
    ranker.rank("who wrote Hamlet?", docs).top_k(3)
"""

from __future__ import annotations

import asyncio
from typing import Any, Sequence

from qrhead_vllm.backends import MassRequest, ScoringBackend
from qrhead_vllm.core import Passage, build_scoring_prompts, score_documents, truncate_words
from qrhead_vllm.core.prompt import NULL_QUERY
from qrhead_vllm.errors import ContextOverflowError, InvalidInputError
from qrhead_vllm.heads import HeadConfig
from qrhead_vllm.head_registry import resolve_heads
from qrhead_vllm.models import DEFAULT_MODEL, prompt_template, resolve_model
from qrhead_vllm.results import Document, DocId, RankedResults, prep_docs, ranked

BACKENDS = ("transformers", "vllm", "sglang")


def make_backend(backend: str, model: str, dtype: str, **engine_kwargs) -> ScoringBackend:
    """Build a scoring backend by name (engine modules are imported only when asked for)."""
    resolved = resolve_model(model)
    if backend == "transformers":
        from qrhead_vllm.backends.transformers_backend import TransformersBackend
        return TransformersBackend(resolved.path, resolved.model_id, dtype=dtype, **engine_kwargs)
    if backend == "vllm":
        from qrhead_vllm.integration.vllm.backend import VLLMBackend
        return VLLMBackend(resolved.path, resolved.model_id, dtype=dtype, **engine_kwargs)
    if backend == "sglang":
        from qrhead_vllm.integration.sglang.backend import SGLangBackend
        return SGLangBackend(resolved.path, resolved.model_id, dtype=dtype, **engine_kwargs)
    raise InvalidInputError(f"unknown backend {backend!r}; choose one of {BACKENDS}")


class QRHeadRanker:
    """Zero-shot re-ranker scoring documents by the attention of query-focused retrieval heads.

    Args:
        model: a bundled name (``smollm2-135m``, ``gemma3-270m``), a local HF dir or a hub id.
        heads: a HeadConfig, a path to one, a shipped config name, ``"all"`` (every head: ICR)
            or a list of ``(layer, head)``; None picks the shipped default for ``model``.
        backend: ``"transformers"`` (reference port), ``"vllm"`` or ``"sglang"`` (engine
            hooks), or a ready :class:`ScoringBackend`.
        calibrate: subtract the null-query ("N/A") attention (spec §2.2); on by default.
        prompt_family: override the chat markers (``llama3``, ``qwen2``, ``chatml``, ``gemma3``).
        max_words: truncate each document to this many words (the reference's BEIR setting).
    """

    def __init__(self, model: str = DEFAULT_MODEL, heads: Any = None,
                 backend: str | ScoringBackend = "transformers", *, dtype: str = "float32",
                 calibrate: bool = True, prompt_family: str | None = None,
                 max_words: int | None = None, null_query: str = NULL_QUERY, **engine_kwargs):
        self.backend = (make_backend(backend, model, dtype, **engine_kwargs)
                        if isinstance(backend, str) else backend)
        self.heads: HeadConfig | None = resolve_heads(heads, model, self.backend.facts)
        self.template = prompt_template(self.backend.hf_config, self.backend.tokenizer,
                                        prompt_family)
        self.calibrate, self.max_words, self.null_query = calibrate, max_words, null_query

    @property
    def head_pairs(self) -> tuple[tuple[int, int], ...]:
        if self.heads is None:  # "all": every head of every layer (ICR)
            f = self.backend.facts
            return tuple((l, h) for l in range(f.num_layers) for h in range(f.num_heads))
        return tuple(self.heads.pairs)

    def prepare(self, query: str, docs: Any, doc_ids: Sequence[DocId] | None = None
                ) -> tuple[list[Document], MassRequest]:
        """Validate inputs and build the scoring prompts (no engine work)."""
        if not isinstance(query, str) or not query.strip():
            raise InvalidInputError("query must be a non-empty string")
        documents = prep_docs(docs, doc_ids)
        passages = [Passage(truncate_words(d.text, self.max_words), d.title) for d in documents]
        real, null = build_scoring_prompts(self.backend.tokenizer, self.template, query.strip(),
                                           passages, self.null_query)
        limit = self.backend.max_model_len
        if max(real.num_tokens, null.num_tokens) > limit:
            raise ContextOverflowError(
                f"the scoring prompt has {real.num_tokens} tokens but the model's context is "
                f"{limit}; pass fewer or shorter documents (or max_words=)")
        return documents, MassRequest(real, null if self.calibrate else None, self.head_pairs)

    def rank(self, query: str, docs: Any, doc_ids: Sequence[DocId] | None = None,
             per_head: bool = False) -> RankedResults:
        """Score ``docs`` for ``query`` and return them best first."""
        return self.rank_many([(query, docs, doc_ids)], per_head=per_head)[0]

    def rank_many(self, batch: Sequence[tuple], per_head: bool = False) -> list[RankedResults]:
        """Rank several queries; engines that batch (vLLM) prefill them together."""
        prepared = [self.prepare(*item) for item in batch]
        masses = self.backend.attention_mass([req for _, req in prepared])
        return [self._finish(item[0], docs, req, m, per_head)
                for item, (docs, req), m in zip(batch, prepared, masses)]

    async def rank_async(self, query: str, docs: Any, doc_ids: Sequence[DocId] | None = None,
                         per_head: bool = False) -> RankedResults:
        """Async :meth:`rank`: uses the backend's async path when it has one. Tokenising and
        prompt building run in a worker thread, off the caller's event loop (a server keeps
        answering other requests while a long candidate list is tokenised)."""
        docs_, req = await asyncio.to_thread(self.prepare, query, docs, doc_ids)
        if hasattr(self.backend, "attention_mass_async"):
            mass = await self.backend.attention_mass_async(req)
        else:
            mass = (await asyncio.to_thread(self.backend.attention_mass, [req]))[0]
        return self._finish(query, docs_, req, mass, per_head)

    def _finish(self, query, docs, req, mass, per_head) -> RankedResults:
        spans = req.real.doc_spans
        scores = score_documents(mass.real, mass.null, spans).tolist()
        per = score_documents(mass.real, mass.null, spans, per_head=True).tolist() if per_head else None
        return ranked(query.strip(), docs, scores, per)

    def close(self) -> None:
        self.backend.close()

