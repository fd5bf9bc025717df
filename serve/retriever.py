"""The retriever role: QRHead rankers over one running engine, one per ScoringOptions (the
method, head set and calibration the ingress resolved for a request: serve/scoring.py).

Scoring requests are ordinary ``max_tokens=1`` engine requests (see
``qrhead_vllm.integration.vllm.backend``), so concurrent rerank calls become concurrent engine
requests that vLLM batches with whatever else the engine is doing (chat, on the CPU default).
"""

from __future__ import annotations

import asyncio
from typing import Any

from qrhead_vllm.errors import ContextOverflowError
from qrhead_vllm.ranker import QRHeadRanker
from qrhead_vllm.results import Document, prep_docs
from qrhead_vllm.scorers import ScoringOptions
from qrhead_vllm.serve.answer import Retrieval
from qrhead_vllm.serve.args import RetrieverConfig
from qrhead_vllm.serve.errors import APIError
from qrhead_vllm.serve.rerank import RerankRequest, rerank_response
from qrhead_vllm.serve.scoring import request_options
from qrhead_vllm.serve.windows import answer_window, rerank_window


class Retriever:
    """Ranks documents for the rerank and answer endpoints of one engine."""

    def __init__(self, cfg: RetrieverConfig, backend, served_names: list[str]):
        self.cfg, self.backend, self.served_names = cfg, backend, served_names
        self.limit = min(cfg.window_tokens or backend.max_model_len, backend.max_model_len)
        self._rankers: dict[ScoringOptions, QRHeadRanker] = {}
        self.default_options = request_options(None, cfg)
        self.default = self.ranker(self.default_options)   # fail at start-up, not per request

    def ranker(self, options: ScoringOptions) -> QRHeadRanker:
        """The (cached) ranker for one request's options."""
        if options not in self._rankers:
            self._rankers[options] = QRHeadRanker(
                self.cfg.model, options=options, backend=self.backend,
                max_words=self.cfg.max_words, reverse_order=self.cfg.reverse_order,
                window=rerank_window(self.limit))
        return self._rankers[options]

    def check_model(self, model: str | None) -> str:
        """The model name to report; unknown names get vLLM's 404 wording."""
        if model is not None and model not in self.served_names:
            raise APIError(404, f"The model `{model}` does not exist. Valid aliases: "
                                f"{', '.join(self.served_names)}.", "model")
        return model or self.served_names[0]

    def head_set_info(self, ranker: QRHeadRanker, name: str | None) -> dict[str, Any]:
        label = ranker.heads.name if ranker.heads is not None else "all"
        return {"method": ranker.options.method, "heads": name or "default", "head_set": label,
                "num_heads": len(ranker.head_pairs), "calibrated": ranker.calibrate}

    async def rerank(self, req: RerankRequest, options: ScoringOptions) -> dict[str, Any]:
        """Handle one validated rerank request (see ``qrhead_vllm.serve.rerank``) with the
        options the ingress built from it."""
        model = self.check_model(req.model)
        if len(req.documents) > self.cfg.max_documents:
            raise APIError(400, f"{len(req.documents)} documents is more than this server's "
                                f"limit of {self.cfg.max_documents} per request; split the "
                                "request", "documents")
        opts = req.qrhead
        ranker = self.ranker(options)
        per_head = bool(opts and opts.per_head)
        docs = prep_docs(req.documents)
        ext = self.head_set_info(ranker, opts.heads) if opts else None
        if opts and opts.windowed:
            results = await ranker.rank_async(req.query, docs, per_head=per_head)
            ext["windows"] = results.windows.num_windows if results.windows else 1
            return rerank_response(req, results, model, results.prompt_tokens, ext)
        try:
            prepared = await asyncio.to_thread(ranker.prepare, req.query, docs)  # off the loop
        except ContextOverflowError as e:
            raise APIError(400, f"{e}; or send \"qrhead\": {{\"windowed\": true}} to score "
                                "them in windows (window scores are only approximately "
                                "comparable, see docs/serving.md)", "documents",
                           "context_length_exceeded") from None
        if ext is not None:
            ext["windows"] = 1
        results = await ranker.score_prepared_async(req.query, prepared, per_head)
        return rerank_response(req, results, model, results.prompt_tokens, ext)

    async def retrieve(self, req: Retrieval, options: ScoringOptions) -> dict[str, Any]:
        """Score the passages of one /v1/answer request (in windows when needed, then the
        finalists together: see qrhead_vllm.windows), keep the best ``top_k``."""
        ranker = self.ranker(options)
        docs = prep_docs(req.passages)
        finalists = max(req.rescore_candidates, req.top_k)
        windowed = ranker.with_window(answer_window(self.limit, finalists))
        results = await windowed.rank_async(req.question, docs)
        w = results.windows
        cited = [_cited(r.document, r.index, r.rank, r.score,
                        w.window_scores[r.index] if w else r.score,
                        w.window_of[r.index] if w else 0)
                 for r in results.results[:req.top_k]]
        info = self.head_set_info(ranker, req.heads)
        info.update(passages=len(docs), windows=w.num_windows if w else 1,
                    rescored=len(w.rescored) if w else 0,
                    prompt_tokens=results.prompt_tokens)
        return {"passages": cited, "retrieval": info}


def _cited(doc: Document, index: int, rank: int, score: float, window_score: float,
           window: int) -> dict[str, Any]:
    out = {"index": index, "rank": rank, "score": score, "window_score": window_score,
           "window": window, "text": doc.text}
    if doc.title is not None:
        out["title"] = doc.title
    return out

