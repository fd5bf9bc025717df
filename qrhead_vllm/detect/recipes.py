"""Detection recipes (docs/method.md §1.2): from per-head document scores to a ranking of heads.

Per example (on the actor), from the ``[L*H, N]`` calibrated, per-head outlier-masked document
scores (``score_documents(..., per_head=True)``), we keep two small vectors so that a checkpoint
serves both recipes:

* ``mass``: Σ over the gold documents of each head's score (0 when no gold is in the prompt);
* ``ndcg``: each head's nDCG@k of ranking the prompt's documents by its own score, computed by
  ranx (None when the example has no gold: pytrec_eval/BEIR skip queries without qrels too);
* ``contrast`` (CoRe-style, arXiv 2510.02219): the gap between the mean score of the gold
  documents and the score of the hardest negative (the highest-scoring non-gold document in
  the prompt). A head that puts mass on gold *and* on distractors scores low here, unlike
  ``mass``. None without gold or without a negative.

On the driver, a head's score is the mean of its per-example values (``mass``: over every
example, as the reference LME recipe; ``ndcg``: over examples with gold).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

RECIPES = ("mass", "ndcg", "contrast")


def gold_mass(doc_scores: torch.Tensor, doc_ids: Sequence[str], gold: frozenset[str]
              ) -> list[float]:
    """``[H]`` Σ of each head's scores over the gold documents present in the prompt."""
    cols = [i for i, d in enumerate(doc_ids) if d in gold]
    if not cols:
        return [0.0] * doc_scores.shape[0]
    return doc_scores[:, cols].double().sum(dim=1).tolist()


def head_ndcg(doc_scores: torch.Tensor, doc_ids: Sequence[str], gold: frozenset[str],
              k: int) -> list[float] | None:
    """``[H]`` nDCG@k of each head's own document ranking, or None without gold.

    ranx evaluates one "query" per head in a single numba call (the heads share the qrels).
    """
    if not gold:
        return None
    from ranx import Qrels, Run, evaluate  # numba JIT on first use: import only where needed

    scores = doc_scores.double().numpy()
    keys = [str(h) for h in range(scores.shape[0])]
    qrels = Qrels({key: {g: 1 for g in sorted(gold)} for key in keys})
    run = Run({key: dict(zip(doc_ids, map(float, row))) for key, row in zip(keys, scores)})
    metric = f"ndcg@{k}"
    # threads=1: the actor already owns its CPUs for torch; per-query results are read back
    # by key because ranx orders them its own way.
    evaluate(qrels, run, metric, return_mean=False, threads=1, save_results_in_run=True)
    return [float(run.scores[metric][key]) for key in keys]


def hard_negative_gap(doc_scores: torch.Tensor, doc_ids: Sequence[str], gold: frozenset[str]
                      ) -> list[float] | None:
    """``[H]`` mean gold score minus the best non-gold score, or None without both."""
    pos = [i for i, d in enumerate(doc_ids) if d in gold]
    neg = [i for i, d in enumerate(doc_ids) if d not in gold]
    if not pos or not neg:
        return None
    s = doc_scores.double()
    return (s[:, pos].mean(dim=1) - s[:, neg].max(dim=1).values).tolist()


def example_vectors(doc_scores: torch.Tensor, doc_ids: Sequence[str], gold: frozenset[str],
                    ndcg_k: int) -> dict:
    """The per-example record of every recipe (JSON-serialisable)."""
    return {"mass": gold_mass(doc_scores, doc_ids, gold),
            "ndcg": head_ndcg(doc_scores, doc_ids, gold, ndcg_k),
            "contrast": hard_negative_gap(doc_scores, doc_ids, gold)}


def reduce_scores(records: Sequence[dict], recipe: str) -> np.ndarray:
    """``[L*H]`` head scores: the mean of the recipe's per-example vectors.

    Raises:
        ValueError: for an unknown recipe or when no example can be scored by it.
    """
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {RECIPES}")
    if any(recipe not in r for r in records):
        raise ValueError(f"recipe {recipe!r}: checkpoint records made before it existed; "
                         "rerun with resume=False")
    rows = [r[recipe] for r in records if r[recipe] is not None]
    if not rows:
        raise ValueError(f"recipe {recipe!r}: no example has gold documents")
    return np.asarray(rows, dtype=np.float64).mean(axis=0)


def rank_heads(scores: np.ndarray, num_heads: int) -> list[tuple[int, int, float]]:
    """All heads best first as ``(layer, head, score)``; ties keep (layer, head) order."""
    order = np.argsort(-scores, kind="stable")
    return [(int(i) // num_heads, int(i) % num_heads, float(scores[i])) for i in order]


def top_overlap(a: np.ndarray, b: np.ndarray, k: int) -> int:
    """How many heads the top-k of two score vectors share."""
    ta = set(np.argsort(-a, kind="stable")[:k].tolist())
    tb = set(np.argsort(-b, kind="stable")[:k].tolist())
    return len(ta & tb)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two score vectors (average ranks for ties)."""
    from scipy.stats import spearmanr
    return float(spearmanr(a, b).statistic)
