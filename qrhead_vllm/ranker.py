"""QRHeadRanker: one noun, one verb, one result type.

    ranker = QRHeadRanker()                       # bundled SmolLM2 + its detected heads
    ranker.rank("who wrote Hamlet?", docs).top_k(3)
"""

from __future__ import annotations

import asyncio
import copy
from dataclasses import replace
from typing import Any, Sequence

from qrhead_vllm.backends import MassRequest, ScoringBackend
from qrhead_vllm.engines import DEFAULT_ENGINE, ENGINE_NAMES, engine, make_backend
from qrhead_vllm.core import Passage, beyond_last_layer, build_scoring_prompts, truncate_words
from qrhead_vllm.core.prompt import NULL_QUERY
from qrhead_vllm.errors import ContextOverflowError, HeadConfigError, InvalidInputError
from qrhead_vllm.heads import HeadConfig, ModelFacts
from qrhead_vllm.head_registry import resolve_heads
from qrhead_vllm.models import DEFAULT_MODEL, prompt_template, resolve_model
from qrhead_vllm.results import Document, DocId, RankedResults, prep_docs, ranked
from qrhead_vllm.scorers import DEFAULT_METHOD, ScoringOptions
from qrhead_vllm.windows import WindowConfig


def score_only_kwargs(model: str, heads: Any, last_layer: int | None = None) -> dict[str, int]:
    """The engine arguments of a score-only engine for ``heads``: the library picks the cut
    (:func:`score_only_cut`); Serve and :class:`QRHeadRanker` pass them to the engine."""
    return {"last_layer": score_only_cut(model, heads, last_layer)}


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
        backend: ``"transformers"`` (reference port), ``"vllm"`` or ``"sglang"`` (engine
            hooks), or a ready :class:`ScoringBackend`.
        dtype: ``"auto"`` (default: bf16 on CPUs with native bf16, fp32 on other CPUs, the
            engine's choice on GPU; :mod:`qrhead_vllm.dtypes`), or an explicit dtype.
        calibrate: subtract the null-query ("N/A") attention (docs/method.md §2.2); None (the
            default): the method's choice, on for every shipped method.
        method: the scoring method, a :mod:`qrhead_vllm.scorers` name: ``"qrhead"`` (default)
            or ``"icr"`` (every head, like ``heads="all"``).
        options: the method, heads and calibration as one :class:`ScoringOptions` (what Serve
            builds from a request); leave ``heads``, ``calibrate`` and ``method`` unset then.
        prompt_family: override the chat markers (``llama3``, ``qwen2``, ``chatml``, ``gemma3``).
        max_words: truncate each document to this many words (the reference's BEIR setting).
        reverse_order: put the documents in each prompt last-to-first, so the first one given
            (first-stage rank 1) sits next to the query, as the reference's BEIR runs do. On by
            default: measured on DL19 (BM25 top-20, 43 queries) it gives the bundled SmolLM2
            49.4 nDCG@10 against 45.1 in the given order; Qwen2.5-Coder-0.5B goes the other way
            (43.3 reversed, 47.7 given), so pass ``False`` for it (docs/results/quality-levers.md).
        window: how to rank more documents than fit one prompt (:class:`WindowConfig`);
            None raises :class:`ContextOverflowError` instead.
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
                 backend: str | ScoringBackend = DEFAULT_ENGINE, *, dtype: str = "auto",
                 calibrate: bool | None = None, method: str = DEFAULT_METHOD,
                 options: ScoringOptions | None = None, prompt_family: str | None = None,
                 max_words: int | None = None, null_query: str = NULL_QUERY,
                 reverse_order: bool = True, window: WindowConfig | None = WindowConfig(),
                 score_only: bool = False, last_layer: int | None = None, **engine_kwargs):
        self.options = _options(options, heads, calibrate, method)
        self.scorer = self.options.spec
        if score_only or last_layer is not None:
            cut_engines = [n for n in ENGINE_NAMES if engine(n).score_only]
            if not isinstance(backend, str) or not engine(backend).score_only:
                raise InvalidInputError(f"score_only / last_layer start a score-only engine: "
                                        f"use them with backend= one of {cut_engines} (the "
                                        "transformers port always stops after the deepest "
                                        "selected layer)")
            engine_kwargs.update(score_only_kwargs(model, self.options.head_spec, last_layer))
        self.backend = (make_backend(backend, model, dtype, **engine_kwargs)
                        if isinstance(backend, str) else backend)
        self.heads: HeadConfig | None = resolve_heads(self.options.head_spec, model,
                                                      self.backend.facts)
        beyond = beyond_last_layer(self.head_pairs, self.backend.last_layer)
        if beyond is not None:
            raise HeadConfigError(beyond)
        self.template = prompt_template(self.backend.hf_config, self.backend.tokenizer,
                                        prompt_family)
        self.calibrate = self.options.calibrated
        self.max_words, self.null_query = max_words, null_query
        self.reverse_order, self.window = reverse_order, window

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
        if self.reverse_order:
            passages.reverse()
        real, null = build_scoring_prompts(self.backend.tokenizer, self.template, query.strip(),
                                           passages, self.null_query)
        if self.reverse_order:             # spans back in input order: scores follow `docs`
            real = replace(real, doc_spans=real.doc_spans[::-1])
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
        """Rank several queries; engines that batch (vLLM) prefill them together. A query
        whose documents do not fit one prompt is ranked in windows (see ``window``)."""
        out: list[RankedResults | None] = [None] * len(batch)
        single = {}
        for n, item in enumerate(batch):
            prepared = self._prepare_or_window(*item)
            if prepared is None:
                out[n] = self._windowed(item, per_head).run()
            else:
                single[n] = prepared
        masses = self.backend.attention_mass([req for _, req in single.values()])
        for (n, (docs, req)), m in zip(single.items(), masses):
            out[n] = self._finish(batch[n][0], docs, req, m, per_head)
        return out

    async def rank_async(self, query: str, docs: Any, doc_ids: Sequence[DocId] | None = None,
                         per_head: bool = False) -> RankedResults:
        """Async :meth:`rank`, on the backend's async path. Tokenising and
        prompt building run in a worker thread, off the caller's event loop (a server keeps
        answering other requests while a long candidate list is tokenised)."""
        prepared = await asyncio.to_thread(self._prepare_or_window, query, docs, doc_ids)
        if prepared is None:
            windowed = await asyncio.to_thread(self._windowed, (query, docs, doc_ids), per_head)
            return await windowed.run_async()
        return await self.score_prepared_async(query, prepared, per_head)

    async def score_prepared_async(self, query: str, prepared: tuple, per_head: bool = False
                                   ) -> RankedResults:
        """Score what :meth:`prepare` returned, ``(docs, request)``, on the async path: for a
        caller that already prepared the prompt (to count its tokens, or to catch a context
        overflow) and should not tokenise it again."""
        docs_, req = prepared
        [mass] = await self.attention_mass_async([req])
        return self._finish(query, docs_, req, mass, per_head)

    async def attention_mass_async(self, requests: Sequence[MassRequest]) -> list:
        """The backend's mass rows without blocking the event loop (concurrent on vLLM)."""
        return await self.backend.attention_mass_async(list(requests))

    def with_window(self, window: WindowConfig | None) -> "QRHeadRanker":
        """This ranker (same backend, heads and prompt) with another window setting."""
        twin = copy.copy(self)
        twin.window = window
        return twin

    def _prepare_or_window(self, query, docs, doc_ids=None):
        """The single-prompt request, or None when the query must be ranked in windows."""
        if self.window is not None and self.window.always:
            prep_docs(docs, doc_ids)                    # validate before any engine work
            return None
        try:
            prepared = self.prepare(query, docs, doc_ids)
        except ContextOverflowError:
            if self.window is None or len(prep_docs(docs, doc_ids)) < 2:
                raise
            return None
        limit = self.window.window_tokens if self.window is not None else None
        if limit and prepared[1].real.num_tokens > limit and len(prepared[0]) > 1:
            return None                                # fits the model, not the window asked
        return prepared

    def _windowed(self, item: tuple, per_head: bool):
        from qrhead_vllm.window_ranker import WindowedRanking
        query, docs, doc_ids = (tuple(item) + (None,))[:3]
        return WindowedRanking(self, query, prep_docs(docs, doc_ids), per_head)

    def _finish(self, query, docs, req, mass, per_head) -> RankedResults:
        spans = req.real.doc_spans
        scores = self.scorer.scores(mass, spans).tolist()
        per = self.scorer.head_scores(mass, spans).tolist() if per_head else None
        return ranked(query.strip(), docs, scores, per, req.prompt_tokens)

    def close(self) -> None:
        self.backend.close()


def _options(options: ScoringOptions | None, heads: Any, calibrate: bool | None,
             method: str) -> ScoringOptions:
    """The ranker's ScoringOptions: ``options`` as given, or built from the three arguments."""
    if options is None:
        return ScoringOptions(method, heads, calibrate)
    if (heads, calibrate, method) != (None, None, DEFAULT_METHOD):
        raise InvalidInputError("pass the method, heads and calibration either as options= "
                                "or as method= / heads= / calibrate=, not both")
    return options
