"""One windowed ranking: a :mod:`qrhead_vllm.windows` plan driven by a :class:`QRHeadRanker`.

The plan says which documents share a prompt; this class builds those prompts with the
ranker's own ``prepare`` (same template, order, truncation and calibration as a single-prompt
call), scores them on the ranker's backend and turns the plan's result into RankedResults.
The sync and async paths differ only in how a stage's prompts reach the engine.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from qrhead_vllm.errors import ContextOverflowError
from qrhead_vllm.results import Document, RankedResults, WindowInfo, ordered
from qrhead_vllm.windows import (PLANS, Groups, PlanResult, passage_tokens, run_plan,
                                 run_plan_async, window_budget)

if TYPE_CHECKING:
    from qrhead_vllm.ranker import QRHeadRanker


class WindowedRanking:
    """Rank ``docs`` for ``query`` in windows (strategy and sizes from ``ranker.window``)."""

    def __init__(self, ranker: "QRHeadRanker", query: str, docs: list[Document],
                 per_head: bool = False):
        self.ranker, self.query, self.docs, self.per_head = ranker, query, docs, per_head
        self.cfg = ranker.window
        backend = ranker.backend
        limit = min(self.cfg.window_tokens or backend.max_model_len, backend.max_model_len)
        shown = [Document(_text(ranker, d), d.title, d.doc_id) for d in docs]
        self.tokens = passage_tokens(backend.tokenizer, ranker.template, shown)
        self.budget = window_budget(backend.tokenizer, ranker.template,
                                    [query.strip(), ranker.null_query], limit)
        for i, n in enumerate(self.tokens):
            if n > self.budget:      # no window can hold it: say so before any engine work
                raise ContextOverflowError(
                    f"document {i} has about {n} tokens but a scoring prompt of {limit} tokens "
                    f"(the model's context is {backend.max_model_len}) holds {self.budget} after "
                    "the query; split it into shorter passages (or max_words=)")
        self.prompt_tokens = 0
        self.head_rows: dict[int, list[float]] = {}     # latest per-head scores of each doc

    def _requests(self, groups: Groups) -> list:
        return [self.ranker.prepare(self.query, [self.docs[i] for i in g])[1] for g in groups]

    def _scores(self, groups: Groups, requests: list, masses: list) -> list[list[float]]:
        out, scorer = [], self.ranker.scorer
        for g, req, mass in zip(groups, requests, masses):
            spans = req.real.doc_spans
            out.append(scorer.scores(mass, spans).tolist())
            self.prompt_tokens += req.prompt_tokens
            if self.per_head:
                per = scorer.head_scores(mass, spans)
                for j, i in enumerate(g):
                    self.head_rows[i] = per[:, j].tolist()
        return out

    def _score_sync(self, groups: Groups) -> list[list[float]]:
        requests = self._requests(groups)
        return self._scores(groups, requests, self.ranker.backend.attention_mass(requests))

    async def _score_async(self, groups: Groups) -> list[list[float]]:
        requests = await asyncio.to_thread(self._requests, groups)     # tokenising: off the loop
        return self._scores(groups, requests, await self.ranker.attention_mass_async(requests))

    def _plan(self):
        return PLANS[self.cfg.strategy](self.tokens, self.budget, self.cfg)

    def run(self) -> RankedResults:
        return self._results(run_plan(self._plan(), self._score_sync))

    async def run_async(self) -> RankedResults:
        return self._results(await run_plan_async(self._plan(), self._score_async))

    def _results(self, plan: PlanResult) -> RankedResults:
        heads = None
        if self.per_head:
            rows = [self.head_rows[i] for i in range(len(self.docs))]
            heads = [list(col) for col in zip(*rows)]          # [num_heads][num_docs]
        info = WindowInfo(self.cfg.strategy, plan.num_windows, plan.window_of,
                          plan.window_scores, plan.rescored, self.prompt_tokens)
        return ordered(self.query.strip(), self.docs, plan.order, plan.scores, heads, info,
                       self.prompt_tokens)


def _text(ranker: "QRHeadRanker", d: Document) -> str:
    from qrhead_vllm.core import truncate_words
    return truncate_words(d.text, ranker.max_words)
