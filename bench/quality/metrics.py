"""Ranking metrics through ranx (a maintained library), never hand-written.

nDCG is trec_eval's ``ndcg_cut``: linear gain = the qrels grade, log2(rank + 1) discount, the
ideal ranking built from *every* judged document of the query (also those outside the
candidates), unjudged documents gain 0 (tests/test_bench_metrics.py checks a hand-computed
trec_eval value). A ``-l2`` suffix (``mrr@10-l2``, ``recall@20-l2``) counts only grades >= 2 as
relevant, trec_eval's ``-l 2`` (the TREC DL passage convention for binary metrics).

Every run is handed to ranx as *rank-based* scores (N, N-1, ..., 1) made from an already
ordered list. ranx, like trec_eval, breaks score ties by document id, which would silently
reorder ties; giving each method's own order as distinct scores keeps the order the method
produced (ties in raw scores fall back to the candidate order, the stable sort's choice).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

METRICS = ("ndcg@10", "mrr@10", "recall@2", "recall@5")
TREC_DL_METRICS = ("ndcg@10", "mrr@10-l2", "recall@20-l2")
GRADED_METRICS = ("ndcg@10", "mrr@10", "recall@5")
Qrels = dict[str, dict[str, int]]
Runs = dict[str, list[str]]            # qid -> doc ids, best first


def positive_qrels(qrels: Mapping[str, Mapping[str, int]]) -> Qrels:
    """Drop zero (and negative) relevance judgements, as the reference's BEIR eval does
    (docs/method.md §2.4)."""
    out = {}
    for qid, judged in qrels.items():
        pos = {str(d): int(r) for d, r in judged.items() if int(r) > 0}
        if pos:
            out[str(qid)] = pos
    return out


def order_by_scores(doc_ids: Sequence[str], scores: Sequence[float]) -> list[str]:
    """Doc ids by descending score; ties keep the given order (stable sort)."""
    order = sorted(range(len(doc_ids)), key=lambda i: -float(scores[i]))
    return [doc_ids[i] for i in order]


def evaluate_runs(qrels: Qrels, runs: Runs, metrics: Sequence[str] = METRICS) -> dict[str, float]:
    """Mean metrics of one method over the queries that have both a ranking and positive qrels.

    Queries without positive judgements are left out, as BEIR's evaluator (pytrec_eval) does.
    """
    from ranx import Qrels as RQrels, Run as RRun, evaluate

    qrels = positive_qrels(qrels)
    qids = [q for q in runs if q in qrels]
    metrics = list(metrics)
    if not qids:
        raise ValueError("no query has both a ranking and a positive relevance judgement")
    run = {q: {d: float(len(runs[q]) - i) for i, d in enumerate(runs[q])} for q in qids}
    scores = evaluate(RQrels({q: qrels[q] for q in qids}), RRun(run), metrics)
    if isinstance(scores, float):                     # ranx returns a bare float for one metric
        scores = {metrics[0]: scores}
    return {m: float(scores[m]) for m in metrics}


def mean_of(results: Sequence[dict[str, float]]) -> dict[str, float]:
    """Metric-wise mean over several runs (random-head draws)."""
    return {m: float(np.mean([r[m] for r in results])) for m in results[0]}


def rrf_fuse(runs: Sequence[Runs], k: int = 60) -> Runs:
    """Reciprocal-rank fusion (Cormack et al., 2009): Σ 1/(k + rank) over the runs; ties keep
    the first run's order."""
    fused = {}
    for qid, first in runs[0].items():
        score = {d: 0.0 for d in first}
        for run in runs:
            for rank, d in enumerate(run[qid], start=1):
                score[d] = score.get(d, 0.0) + 1.0 / (k + rank)
        fused[qid] = order_by_scores(first, [score[d] for d in first])
    return fused
