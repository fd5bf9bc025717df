"""Calibration, head aggregation and the outlier-masked document score (docs/method.md §2.2
steps 3–5).

Expected values are worked out by hand in the comments, or from the spec's formula
``Σ x·[x > mean(x) − 2·std(x, unbiased)]`` written out independently of the core.
"""

from __future__ import annotations

import math

import pytest
import torch

from qrhead_vllm.core import calibrate, doc_scores, score_documents


def formula_score(x: torch.Tensor) -> float:
    """Spec step 10 written out on a 1-D tensor; one token: its value (our departure)."""
    if x.numel() == 1:
        return x.item()
    thr = x.mean() - 2 * torch.std(x, unbiased=True)
    return float(sum(v for v in x.tolist() if v > thr))


# --- calibrate -----------------------------------------------------------------------------

@pytest.mark.parametrize("real_len,null_len", [(10, 7), (7, 10), (9, 9)])
def test_calibrate_subtracts_over_the_common_length(real_len, null_len):
    g = torch.Generator().manual_seed(0)
    real = torch.rand(3, real_len, generator=g)
    null = torch.rand(3, null_len, generator=g)
    c = calibrate(real, null)
    t = min(real_len, null_len)
    assert c.shape == (3, t)
    assert torch.equal(c, real[:, :t] - null[:, :t])  # subtraction, not division


def test_calibrate_keeps_leading_dims():
    real, null = torch.ones(2, 4, 6), torch.full((2, 4, 5), 0.25)
    assert torch.equal(calibrate(real, null), torch.full((2, 4, 5), 0.75))


# --- the outlier mask ----------------------------------------------------------------------

def test_mask_uses_unbiased_std():
    # x = [1, 3, 3, 3, 3, 4]: mean = 17/6, Σ(x − mean)² = 29/6.
    # Unbiased std = sqrt(29/30) ≈ 0.983 → thr ≈ 2.833 − 1.966 = 0.867 < 1: every token kept → 17.
    # A biased std, sqrt(29/36) ≈ 0.898, would give thr ≈ 1.038 and drop the 1 → 16.
    x = torch.tensor([[1.0, 3, 3, 3, 3, 4]])
    thr = 17 / 6 - 2 * math.sqrt(29 / 30)
    assert 0.86 < thr < 0.87
    assert doc_scores(x, [(0, 6)]).flatten().tolist() == pytest.approx([17.0])


def test_mask_drops_the_low_outlier_only():
    # x = [4]*7 + [-6]: mean = 22/8 = 2.75, Σ(x − mean)² = 7·1.5625 + 76.5625 = 87.5,
    # std = sqrt(87.5/7) ≈ 3.536 → thr ≈ 2.75 − 7.07 = −4.32 > −6: the −6 goes → 28.
    x = torch.tensor([4.0] * 7 + [-6.0])
    assert doc_scores(x, [(0, 8)]).tolist() == pytest.approx([28.0])


def test_flat_document_scores_zero():
    # std = 0 → thr = mean and no token is strictly above it (the reference's behaviour).
    x = torch.full((5,), 0.3)
    assert doc_scores(x, [(0, 5)]).tolist() == [0.0]


def test_random_docs_match_formula():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, generator=g)
    spans = [(0, 9), (9, 10), (12, 25), (25, 40)]
    got = doc_scores(x, spans)
    for (a, b), score in zip(spans, got.tolist()):
        assert score == pytest.approx(formula_score(x[a:b]), abs=1e-5)


# --- single-token documents (documented departure from the reference) -----------------------

@pytest.mark.parametrize("per_head", [False, True])
def test_one_token_document_scores_its_value(per_head):
    # The reference gets std = NaN, an all-False mask and a 0; we keep the token's value.
    real = torch.tensor([[0.0, 0.5, 0.0, 0.1, 0.2, 0.3],
                         [0.0, 0.25, 0.0, 0.1, 0.2, 0.3]])
    scores = score_documents(real, None, [(1, 2), (3, 6)], per_head=per_head)
    assert not torch.isnan(scores).any()
    if per_head:
        assert scores[:, 0].tolist() == pytest.approx([0.5, 0.25])
    else:
        assert scores[0].item() == pytest.approx(0.75)


def test_one_token_document_after_calibration_can_be_negative():
    real = torch.tensor([[0.1, 0.2, 0.3]])
    null = torch.tensor([[0.1, 0.5, 0.3]])
    assert score_documents(real, null, [(1, 2)]).tolist() == pytest.approx([-0.3])


# --- heads: per head (detection) vs summed (ranking) ---------------------------------------

def two_head_masses() -> torch.Tensor:
    head0 = [1.0] * 7 + [-9.0]   # low outlier in head 0 alone: per head it is dropped → 7
    head1 = [0.0] * 7 + [9.0]    # high values are never dropped → 9
    return torch.tensor([head0, head1])


def test_per_head_masks_each_head_separately():
    scores = score_documents(two_head_masses(), None, [(0, 8)], per_head=True)
    assert scores.shape == (2, 1)
    assert scores[:, 0].tolist() == pytest.approx([7.0, 9.0])


def test_summed_masks_after_the_head_sum():
    # Σ heads = [1]*7 + [0]: mean 0.875, std = sqrt(0.875/7) ≈ 0.354 → thr ≈ 0.168, the 0 is
    # dropped (it adds nothing) → 7. Masking per head and then summing would give 7 + 9 = 16.
    scores = score_documents(two_head_masses(), None, [(0, 8)])
    assert scores.shape == (1,)
    assert scores.item() == pytest.approx(7.0)


def test_calibrated_multi_doc_scores_match_hand_pipeline():
    g = torch.Generator().manual_seed(2)
    heads, t_real, t_null = 4, 50, 44
    real = torch.rand(heads, t_real, generator=g)
    null = torch.rand(heads, t_null, generator=g)
    spans = [(2, 11), (11, 20), (23, 24), (30, 44)]
    c = real[:, :t_null] - null
    summed = score_documents(real, null, spans)
    per_head = score_documents(real, null, spans, per_head=True)
    assert summed.shape == (len(spans),) and per_head.shape == (heads, len(spans))
    for i, (a, b) in enumerate(spans):
        assert summed[i].item() == pytest.approx(formula_score(c.sum(0)[a:b]), abs=1e-5)
        for h in range(heads):
            assert per_head[h, i].item() == pytest.approx(formula_score(c[h, a:b]), abs=1e-5)


def test_tokens_outside_spans_do_not_matter():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 30, generator=g)
    spans = [(3, 10), (12, 20)]
    before = score_documents(x, None, spans)
    x[:, [0, 1, 2, 10, 11, 20, 29]] = 100.0
    assert torch.equal(score_documents(x, None, spans), before)
