"""bf16 against fp32 retriever engines on the shared evaluation split (issue 13, item 4).

Both engines are score-only vLLM engines on the same model and heads; only the dtype differs.
Per query we compare the document scores (max / mean absolute difference), the rankings
(Kendall's tau-b, identical order, same top document) and nDCG@10 against the gold documents.

Noise: the evaluation split has 35 queries, so a difference of one swapped document in one query
moves nDCG@10 by up to ~1 point. We call quality *unchanged within noise* when the 95 %
paired-bootstrap interval of the per-query nDCG@10 difference (bf16 − fp32, 10,000 resamples of
the queries) contains 0; its width is the noise a 35-query split can resolve.
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass
from typing import Callable, Sequence

BOOTSTRAP = 10_000


def ndcg_at_10(ranked_ids: Sequence[str], gold: frozenset[str]) -> float:
    """Binary-relevance nDCG@10 (the quality bench's metric, computed the same way ranx does)."""
    dcg = sum(1 / math.log2(i + 2) for i, d in enumerate(ranked_ids[:10]) if d in gold)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(len(gold), 10)))
    return dcg / ideal if ideal else 0.0


def score_pairs(a, b, examples) -> list[tuple[list[float], list[float]]]:
    """Each example's document scores from two rankers, both in the example's document order."""
    def scores(ranker, example) -> list[float]:
        ranking = ranker.rank(example.query, list(example.documents))
        return [ranking.get_result_by_docid(d.doc_id).score for d in example.documents]
    return [(scores(a, e), scores(b, e)) for e in examples]


def agreement_with_port(engine, model: str, examples, label: str,
                        check: Callable[[object], None] = lambda engine: None
                        ) -> tuple[float, float, float]:
    """``check(engine)``, then rank ``examples`` with ``engine`` and with the transformers port
    of ``model`` in bf16; both rankers are closed after. Prints and returns
    :func:`rank_agreement` (the bf16 engine tests' figures)."""
    from qrhead_vllm.ranker import QRHeadRanker
    port = None
    try:
        check(engine)
        port = QRHeadRanker(model, backend="transformers", dtype="bfloat16")
        pairs = score_pairs(engine, port, examples)
    finally:
        engine.close()
        if port is not None:
            port.close()
    mean, lowest, worst = rank_agreement(pairs)
    print(f"{label} vs port (bf16), {len(pairs)} queries: mean tau {mean:.4f}, "
          f"min {lowest:.4f}, largest score difference {worst:.4g}")
    return mean, lowest, worst


def rank_agreement(pairs: Sequence[tuple[Sequence[float], Sequence[float]]]
                   ) -> tuple[float, float, float]:
    """Mean and lowest Kendall tau-b over (scores, scores) pairs of the same documents, and the
    largest score difference: how two engines or dtypes agree on a set of queries."""
    taus = [kendall_tau_b(a, b) for a, b in pairs]
    worst = max(abs(x - y) for a, b in pairs for x, y in zip(a, b))
    return statistics.fmean(taus), min(taus), worst


def kendall_tau_b(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b of two score lists over the same documents (ties counted as in scipy)."""
    concordant = discordant = ties_a = ties_b = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            da, db = a[i] - a[j], b[i] - b[j]
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif (da > 0) == (db > 0):
                concordant += 1
            else:
                discordant += 1
    denom = math.sqrt((concordant + discordant + ties_a) * (concordant + discordant + ties_b))
    return (concordant - discordant) / denom if denom else 1.0


def bootstrap_interval(diffs: Sequence[float], reps: int = BOOTSTRAP, seed: int = 0
                       ) -> tuple[float, float]:
    """95 % interval of the mean of ``diffs`` over resampled queries."""
    rng, n = random.Random(seed), len(diffs)
    means = sorted(sum(rng.choice(diffs) for _ in range(n)) / n for _ in range(reps))
    return means[int(0.025 * reps)], means[int(0.975 * reps) - 1]


@dataclass
class Bf16Quality:
    queries: int
    max_abs_diff: float
    mean_abs_diff: float
    kendall_mean: float
    kendall_min: float
    identical_rankings: int
    same_top1: int
    ndcg_fp32: float
    ndcg_bf16: float
    ndcg_interval: tuple[float, float]     # 95 % bootstrap interval of bf16 − fp32

    @property
    def unchanged(self) -> bool:
        return self.ndcg_interval[0] <= 0 <= self.ndcg_interval[1]


def compare(fp32, bf16, examples) -> Bf16Quality:
    """Rank every example with both rankers (same heads, same prompts) and compare."""
    diffs, taus, same, top1, n32, n16 = [], [], 0, 0, [], []
    for e in examples:
        a, b = (r.rank(e.query, list(e.documents)) for r in (fp32, bf16))
        sa = [a.get_result_by_docid(d.doc_id).score for d in e.documents]
        sb = [b.get_result_by_docid(d.doc_id).score for d in e.documents]
        diffs += [abs(x - y) for x, y in zip(sa, sb)]
        taus.append(kendall_tau_b(sa, sb))
        ia, ib = [r.doc_id for r in a], [r.doc_id for r in b]
        same += ia == ib
        top1 += ia[0] == ib[0]
        n32.append(ndcg_at_10(ia, e.gold_ids))
        n16.append(ndcg_at_10(ib, e.gold_ids))
    return Bf16Quality(len(examples), max(diffs), statistics.fmean(diffs),
                       statistics.fmean(taus), min(taus), same, top1, 100 * statistics.fmean(n32),
                       100 * statistics.fmean(n16),
                       tuple(100 * x for x in bootstrap_interval([y - x for x, y in
                                                                  zip(n32, n16)])))
