"""Window plans as pure functions: packing, the rescore and sliding strategies with scripted
scores (the real-model checks are in tests/test_ranker_windows.py)."""

from __future__ import annotations

import pytest

from qrhead_vllm.errors import ContextOverflowError, InvalidInputError
from qrhead_vllm.windows import (WindowConfig, pack_windows, rescore_plan, run_plan,
                                 sliding_plan)


def test_pack_windows_respects_tokens_and_docs():
    groups = pack_windows([100] * 10, budget=450)
    assert sum(groups, []) == list(range(10)) and all(len(g) * 100 <= 450 for g in groups)
    assert [len(g) for g in groups] in ([4, 3, 3], [4, 4, 2])          # balanced, fewest
    assert pack_windows([10, 10], budget=100) == [[0, 1]]
    assert pack_windows([10] * 10, budget=1000, max_docs=4) in ([[0, 1, 2, 3], [4, 5, 6, 7],
                                                                  [8, 9]],
                                                                 [[0, 1, 2, 3], [4, 5, 6],
                                                                  [7, 8, 9]])
    with pytest.raises(ContextOverflowError, match="passage 1"):
        pack_windows([10, 500], budget=100)


def scripted(true_scores, log):
    """score_groups for run_plan: a document's score is its true score (as if every prompt
    agreed), recording the groups each stage asked for."""
    def score(groups):
        log.append(groups)
        return [[true_scores[i] for i in g] for g in groups]
    return score


def test_rescore_plan_windows_then_finalists_together():
    true = [float(i % 7) for i in range(12)]
    log = []
    cfg = WindowConfig(finalists=4)
    res = run_plan(rescore_plan([10] * 12, 40, cfg), scripted(true, log))
    assert len(log) == 2 and len(log[0]) == 3                 # 3 windows of 4, then 1 prompt
    assert len(log[1]) == 1 and len(log[1][0]) == 4
    assert log[1][0] == sorted(log[1][0])                     # finalists in the given order
    assert res.rescored == log[1][0] and res.num_windows == 3
    assert sorted(res.order) == list(range(12))
    # finalists: the best of each window, then second bests, until 4 are chosen
    assert set(res.rescored) >= {max(g, key=lambda i: true[i]) for g in log[0]}
    assert res.order[:4] == sorted(res.rescored, key=lambda i: -true[i])


def test_rescore_plan_one_window_is_a_plain_ranking():
    true = [0.3, 0.9, 0.1]
    res = run_plan(rescore_plan([5, 5, 5], 100, WindowConfig()), scripted(true, log := []))
    assert len(log) == 1 and res.order == [1, 0, 2] and res.scores == true


def test_sliding_plan_bubbles_the_best_to_the_top():
    true = [float(i) for i in range(10)]                       # the last document is best
    log = []
    res = run_plan(sliding_plan([1] * 10, 100, WindowConfig("sliding", window_docs=4, step=2)),
                   scripted(true, log))
    assert [len(g[0]) for g in log] == [4, 4, 4, 4]            # 6..9, 4..7, 2..5, 0..3
    # each window hands its best (window - step) up: the top 2 end up exact, as in RankGPT
    assert res.order[:2] == [9, 8] and sorted(res.order) == list(range(10))


def test_window_config_validates():
    with pytest.raises(InvalidInputError):
        WindowConfig("bubble")
    with pytest.raises(InvalidInputError):
        WindowConfig(window_docs=0)
