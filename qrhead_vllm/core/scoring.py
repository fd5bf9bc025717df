"""From attention mass to document scores: calibration, head aggregation, outlier mask.

docs/method.md §2.2 steps 3–5: ``C = P − P0`` (real minus null query, per head and token), sum
over the selected heads, then per document ``thr = mean − 2·std`` (unbiased) and the sum of
tokens above it. Detection applies the mask per head instead of after the head sum
(docs/method.md §1.2).

Departure from the reference (deliberate): a document of fewer than two tokens has no standard
deviation; the reference gets NaN and scores it 0. We apply no mask to it and score it by the
sum of its tokens (its single token), so it still ranks by the attention it receives.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

# How a document's tokens become its score: ``[..., n_tokens] -> [...]``.
SpanSum = Callable[[torch.Tensor], torch.Tensor]


def calibrate(real_mass: torch.Tensor, null_mass: torch.Tensor) -> torch.Tensor:
    """Per-token calibrated mass ``P − P0`` over the common length (the shared prefix, docs incl.).

    Args:
        real_mass, null_mass: ``[..., T]`` and ``[..., T0]`` mean attention rows of the two passes.
    """
    t = min(real_mass.shape[-1], null_mass.shape[-1])
    return real_mass[..., :t] - null_mass[..., :t]


def masked_span_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over the last dim of the values above ``mean − 2·std`` (no mask below 2 tokens)."""
    if x.shape[-1] < 2:
        return x.sum(dim=-1)
    thr = x.mean(dim=-1, keepdim=True) - 2 * x.std(dim=-1, keepdim=True)
    return torch.where(x > thr, x, torch.zeros_like(x)).sum(dim=-1)


def doc_scores(token_scores: torch.Tensor, doc_spans: Sequence[tuple[int, int]],
               span_sum: SpanSum = masked_span_sum) -> torch.Tensor:
    """``span_sum`` (default: the outlier-masked sum) of ``token_scores[..., a:b]`` for each
    document span → ``[..., N]``."""
    cols = [span_sum(token_scores[..., a:b]) for a, b in doc_spans]
    return torch.stack(cols, dim=-1)


def score_documents(real_mass: torch.Tensor, null_mass: torch.Tensor | None,
                    doc_spans: Sequence[tuple[int, int]], per_head: bool = False,
                    span_sum: SpanSum = masked_span_sum) -> torch.Tensor:
    """Document scores from the per-head mean attention rows of the two passes.

    Args:
        real_mass: ``[H, T]`` mean over query-span rows, selected heads only (or all for ICR).
        null_mass: ``[H, T0]`` the same for the null query, or None to skip calibration.
        doc_spans: half-open token spans of the documents.
        per_head: mask and sum per head (detection) instead of after summing heads (ranking).
        span_sum: how a document's tokens become its score (the scoring method's choice,
            :mod:`qrhead_vllm.scorers`); QRHead's outlier-masked sum by default.

    Returns:
        ``[N]`` scores, or ``[H, N]`` with ``per_head``.
    """
    c = real_mass if null_mass is None else calibrate(real_mass, null_mass)
    return doc_scores(c if per_head else c.sum(dim=0), doc_spans, span_sum)
