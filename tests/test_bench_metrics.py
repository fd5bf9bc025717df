"""Graded metrics as trec_eval computes them, on a tiny run checked by hand, and RRF fusion."""

from __future__ import annotations

import math

import pytest

from bench.quality.metrics import TREC_DL_METRICS, evaluate_runs, rrf_fuse

# One query, graded like TREC DL: "e" is judged (grade 2) but not among the candidates, "c" is
# judged non-relevant, "x" is unjudged.
QRELS = {"q": {"a": 3, "b": 2, "c": 0, "d": 1, "e": 2}}
RUN = {"q": ["c", "b", "x", "a", "d"]}


def test_graded_ndcg_equals_trec_eval_by_hand():
    # trec_eval ndcg_cut.10: gain = grade, discount log2(rank + 1), ideal from *all* judged docs
    # (a=3, b=2, e=2, d=1), unjudged gain 0. By hand:
    #   DCG  = 0/1 + 2/log2(3) + 0/2 + 3/log2(5) + 1/log2(6)            = 2.9469...
    #   IDCG = 3/1 + 2/log2(3) + 2/2 + 1/log2(5)                          = 5.6926...
    dcg = 2 / math.log2(3) + 3 / math.log2(5) + 1 / math.log2(6)
    idcg = 3 + 2 / math.log2(3) + 1 + 1 / math.log2(5)
    assert dcg / idcg == pytest.approx(0.516596, abs=1e-6)        # the hand-checked value
    got = evaluate_runs(QRELS, RUN, TREC_DL_METRICS)
    assert got["ndcg@10"] == pytest.approx(0.516596, abs=1e-6)
    # -l 2: only a, b, e count; first at rank 2; two of three within 20.
    assert got["mrr@10-l2"] == pytest.approx(0.5)
    assert got["recall@20-l2"] == pytest.approx(2 / 3)


def test_ideal_counts_judged_documents_outside_the_candidates():
    inside = {"q": {"a": 3, "b": 2}}
    perfect = {"q": ["a", "b"]}
    assert evaluate_runs(inside, perfect, ("ndcg@10",))["ndcg@10"] == pytest.approx(1.0)
    with_outside = {"q": {"a": 3, "b": 2, "z": 3}}
    assert evaluate_runs(with_outside, perfect, ("ndcg@10",))["ndcg@10"] < 0.8


def test_rrf_fusion_of_two_orders():
    a = {"q": ["x", "y", "z"]}
    b = {"q": ["z", "y", "x"]}
    # x and z tie (1/61 + 1/63) ahead of y (2/62); the tie keeps the first run's order
    assert rrf_fuse([a, b]) == {"q": ["x", "z", "y"]}
    assert rrf_fuse([a, {"q": ["y", "z", "x"]}])["q"] == ["y", "x", "z"]
