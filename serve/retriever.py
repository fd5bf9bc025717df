"""The retriever role: QRHead rankers over one running AsyncLLM, per head set and calibration.

Scoring requests are ordinary ``max_tokens=1`` engine requests (see
``qrhead_vllm.integration.vllm.backend``), so concurrent rerank calls become concurrent engine
requests that vLLM batches with whatever else the engine is doing (chat, on the CPU default).
"""

from __future__ import annotations

import asyncio
from typing import Any

from qrhead_vllm.errors import ContextOverflowError
from qrhead_vllm.head_registry import shipped_head_configs
from qrhead_vllm.ranker import QRHeadRanker
from qrhead_vllm.results import Document, prep_docs
from qrhead_vllm.serve.args import RetrieverConfig
from qrhead_vllm.serve.errors import APIError
from qrhead_vllm.serve.rerank import RerankRequest, rerank_response
from qrhead_vllm.serve.windows import answer_window, rerank_window

# Head-set names a request may ask for besides the shipped config names. Requests can never name
# a file path: that would let a client make the server read arbitrary files.
SPECIAL_HEADS = ("default", "all")


class Retriever:
    """Ranks documents for the rerank and answer endpoints of one engine."""

    def __init__(self, cfg: RetrieverConfig, backend, served_names: list[str]):
        self.cfg, self.backend, self.served_names = cfg, backend, served_names
        self.limit = min(cfg.window_tokens or backend.max_model_len, backend.max_model_len)
        self._rankers: dict[tuple[str, bool], QRHeadRanker] = {}
        self.default = self.ranker("default", cfg.calibrate)  # fail at start-up, not per request

    def ranker(self, heads: str | None, calibrate: bool | None) -> QRHeadRanker:
        """A (cached) ranker for a head-set name; unknown names are a 400 naming the choices."""
        name = heads or "default"
        cal = self.cfg.calibrate if calibrate is None else calibrate
        if (name, cal) not in self._rankers:
            if name not in SPECIAL_HEADS and name not in shipped_head_configs():
                raise APIError(400, f"qrhead.heads: unknown head set {name!r}; use 'default', "
                                    f"'all' or one of {sorted(shipped_head_configs())}",
                               "qrhead.heads")
            spec = self.cfg.heads if name == "default" else name
            heads_arg = None if spec == "default" else spec
            self._rankers[(name, cal)] = QRHeadRanker(
                self.cfg.model, heads=heads_arg, backend=self.backend, calibrate=cal,
                max_words=self.cfg.max_words, reverse_order=self.cfg.reverse_order,
                window=rerank_window(self.limit))
        return self._rankers[(name, cal)]

    def check_model(self, model: str | None) -> str:
        """The model name to report; unknown names get vLLM's 404 wording."""
        if model is not None and model not in self.served_names:
            raise APIError(404, f"The model `{model}` does not exist. Valid aliases: "
                                f"{', '.join(self.served_names)}.", "model")
        return model or self.served_names[0]

    def head_set_info(self, ranker: QRHeadRanker, name: str | None) -> dict[str, Any]:
        label = ranker.heads.name if ranker.heads is not None else "all"
        return {"heads": name or "default", "head_set": label,
                "num_heads": len(ranker.head_pairs), "calibrated": ranker.calibrate}

    async def rerank(self, req: RerankRequest) -> dict[str, Any]:
        """Handle one validated rerank request (see ``qrhead_vllm.serve.rerank``)."""
        model = self.check_model(req.model)
        if len(req.documents) > self.cfg.max_documents:
            raise APIError(400, f"{len(req.documents)} documents is more than this server's "
                                f"limit of {self.cfg.max_documents} per request; split the "
                                "request", "documents")
        opts = req.qrhead
        ranker = self.ranker(opts.heads if opts else None, opts.calibrate if opts else None)
        per_head = bool(opts and opts.per_head)
        docs = prep_docs(req.documents)
        ext = self.head_set_info(ranker, opts.heads if opts else None) if opts else None
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

    async def retrieve(self, question: str, passages: list[dict[str, Any]], top_k: int,
                       rescore_candidates: int, heads: str | None = None,
                       calibrate: bool | None = None) -> dict[str, Any]:
        """Score passages (in windows when needed, then the finalists together: see
        qrhead_vllm.windows), keep the best ``top_k``."""
        ranker = self.ranker(heads, calibrate)
        docs = prep_docs(passages)
        windowed = ranker.with_window(answer_window(self.limit, max(rescore_candidates, top_k)))
        results = await windowed.rank_async(question, docs)
        w = results.windows
        cited = [_cited(r.document, r.index, r.rank, r.score,
                        w.window_scores[r.index] if w else r.score,
                        w.window_of[r.index] if w else 0)
                 for r in results.results[:top_k]]
        info = self.head_set_info(ranker, heads)
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

