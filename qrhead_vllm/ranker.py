"""QRHeadRanker: one noun, one verb, one result type.

    ranker = QRHeadRanker()                       # bundled SmolLM2 + its detected heads
    ranker.rank("who wrote Hamlet?", docs).top_k(3)
"""

from __future__ import annotations

import asyncio
from typing import Any, Sequence

from qrhead_vllm.backends import MassRequest, ScoringBackend
from qrhead_vllm.core import (Passage, beyond_last_layer, build_scoring_prompts, score_documents,
                              truncate_words)
from qrhead_vllm.core.prompt import NULL_QUERY
from qrhead_vllm.errors import ContextOverflowError, HeadConfigError, InvalidInputError
from qrhead_vllm.heads import HeadConfig, ModelFacts
from qrhead_vllm.head_registry import resolve_heads
from qrhead_vllm.models import DEFAULT_MODEL, prompt_template, resolve_model
from qrhead_vllm.results import Document, DocId, RankedResults, prep_docs, ranked

BACKENDS = ("transformers", "vllm")


def make_backend(backend: str, model: str, dtype: str, **engine_kwargs) -> ScoringBackend:
    """Build a scoring backend by name (engine modules are imported only when asked for)."""
    resolved = resolve_model(model)
    if backend == "transformers":
        from qrhead_vllm.backends.transformers_backend import TransformersBackend
        return TransformersBackend(resolved.path, resolved.model_id, dtype=dtype, **engine_kwargs)
    if backend == "vllm":
        from qrhead_vllm.integration.vllm.backend import VLLMBackend
        return VLLMBackend(resolved.path, resolved.model_id, dtype=dtype, **engine_kwargs)
    raise InvalidInputError(f"unknown backend {backend!r}; choose one of {BACKENDS}")


def score_only_cut(model: str, heads: Any, last_layer: int | None = None) -> int:
    """The last layer a score-only engine for ``heads`` must compute: ``last_layer`` when
    given, else the deepest layer holding one of the heads (read before any engine starts)."""
    if last_layer is not None:
        return int(last_layer)
    from transformers import AutoConfig
    resolved = resolve_model(model)
    facts = ModelFacts.from_hf_config(AutoConfig.from_pretrained(resolved.path),
                                      resolved.model_id)
    config = resolve_heads(heads, model, facts)
    if config is None:                      # every head (ICR): every layer
        return facts.num_layers - 1
    return max(layer for layer, _ in config.pairs)


class QRHeadRanker:
    """Zero-shot re-ranker scoring documents by the attention of query-focused retrieval heads.

    Args:
        model: a bundled name (``smollm2-135m``, ``gemma3-270m``), a local HF dir or a hub id.
        heads: a HeadConfig, a path to one, a shipped config name, ``"all"`` (every head: ICR)
            or a list of ``(layer, head)``; None picks the shipped default for ``model``.
        backend: ``"transformers"`` (reference port) or ``"vllm"`` (engine hook), or a ready
            :class:`ScoringBackend`.
        calibrate: subtract the null-query ("N/A") attention (spec §2.2); on by default.
        prompt_family: override the chat markers (``llama3``, ``qwen2``, ``chatml``, ``gemma3``).
        max_words: truncate each document to this many words (the reference's BEIR setting).
        score_only: ``backend="vllm"`` only: start a score-only engine that builds, loads and
            runs the model up to the deepest layer of ``heads`` (or ``last_layer``) and refuses
            generation. Scores are the full model's, bit for bit.
        last_layer: the cut of a score-only engine, when other head sets up to that layer
            should also work on it (default: the deepest layer of ``heads``).

    Raises:
        HeadConfigError: ``heads`` that do not fit the model, or that lie beyond the last layer
            of a score-only engine (the message names the layer).
    """

    def __init__(self, model: str = DEFAULT_MODEL, heads: Any = None,
                 backend: str | ScoringBackend = "transformers", *, dtype: str = "float32",
                 calibrate: bool = True, prompt_family: str | None = None,
                 max_words: int | None = None, null_query: str = NULL_QUERY,
                 score_only: bool = False, last_layer: int | None = None, **engine_kwargs):
        if score_only or last_layer is not None:
            if backend != "vllm":
                raise InvalidInputError("score_only / last_layer start a score-only vLLM engine: "
                                        "use them with backend='vllm' (the transformers port "
                                        "always stops after the deepest selected layer)")
            engine_kwargs["last_layer"] = score_only_cut(model, heads, last_layer)
        self.backend = (make_backend(backend, model, dtype, **engine_kwargs)
                        if isinstance(backend, str) else backend)
        self.heads: HeadConfig | None = resolve_heads(heads, model, self.backend.facts)
        beyond = beyond_last_layer(self.head_pairs, getattr(self.backend, "last_layer", None))
        if beyond is not None:
            raise HeadConfigError(beyond)
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
        """Async :meth:`rank`: uses the backend's async path when it has one."""
        docs_, req = self.prepare(query, docs, doc_ids)
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

