"""ContextCite and AT2, the published attribution methods, on the bench's own prompt and answer.

Both come from their PyPI packages (``context-cite`` 0.0.4, ``at2`` 0.0.1), installed in a venv
of their own (their dependencies, datasets/spacy/nltk, stay out of the project's):

    python -m venv .venv-cite
    echo "import site; site.addsitedir('$PWD/.venv/lib/python3.11/site-packages')" \\
        > .venv-cite/lib/python3.11/site-packages/_main_venv.pth
    .venv-cite/bin/pip install context-cite==0.0.4 at2==0.0.1

Sources are the question's documents (not ContextCite's default sentences): an ablation drops
documents from the scoring prompt (:func:`ablation_outputs`: the package's mask draws and
logit-probabilities over our prompt builder), one forward pass each.

* **ContextCite**: LASSO of the answer's logit-probability on the keep masks (the package's
  ``LassoRegression`` and ``aggregate_logit_probs``, as ``ContextCiter.get_attributions`` does
  for the whole response).
* **AT2**: a linear weight per (layer, head) on the answer tokens' attention mass per document,
  learned so that the weighted mass predicts the ablation outputs (Pearson correlation: the
  package's ``LinearScoreEstimator`` and ``PearsonCorrelationLoss``, its trainer's optimiser
  settings). Its ablations here drop documents from the text, ContextCite's way, where the
  package masks their attention; every training example gives one target (the whole answer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

AT2_ITERATIONS = 1000          # the package trainer's defaults
AT2_LR = 1e-3
AT2_MAX_GRAD_NORM = 1.0
KEEP_PROB = 0.5                # both packages' ablation_keep_prob / alpha


def ablation_outputs(model, prompt_ids: Callable[[np.ndarray], list[int]], num_docs: int,
                     answer_ids: Sequence[int], num_ablations: int,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``num_ablations`` random keep-masks over the documents and, for each, the answer tokens'
    logit-probabilities with only the kept documents in the prompt → (masks ``[M, N]`` bool,
    logit-probs ``[M, G]``). One forward pass per mask.

    The package's ``get_masks_and_logit_probs`` with its own mask draws (``_create_mask``, seeds
    ``seed..seed+M-1``) and its ``_compute_logit_probs``; the forward keeps only the logits of
    the rows that predict the answer (the package computes the vocabulary's logits for every
    prompt position, about a third more work on this model, for the same numbers).
    """
    from context_cite.utils import _compute_logit_probs, _create_mask

    answer = list(answer_ids)
    masks = np.stack([_create_mask(num_docs, KEEP_PROB, seed + i) for i in range(num_ablations)])
    out = []
    with torch.inference_mode():
        for mask in masks:
            x = torch.tensor([list(prompt_ids(mask)) + answer], device=model.device)
            logits = model(input_ids=x, logits_to_keep=len(answer) + 1).logits[:, :-1]
            labels = torch.tensor([answer], device=model.device)
            out.append(_compute_logit_probs(logits.float(), labels)[0].cpu().numpy())
    return masks, np.stack(out).astype(np.float32)


def contextcite_scores(masks: np.ndarray, logit_probs: np.ndarray) -> np.ndarray:
    """ContextCite's per-document attribution of the whole answer (LASSO weights)."""
    from context_cite.solver import LassoRegression
    from context_cite.utils import aggregate_logit_probs

    weight, _ = LassoRegression().fit(masks, aggregate_logit_probs(logit_probs),
                                      logit_probs.shape[1])
    return weight


def at2_features(mass: torch.Tensor, answer_tokens: int) -> torch.Tensor:
    """AT2's features of one answer, ``[N, L*H]``: each head's attention mass on each document,
    averaged over the rows that emit the answer's tokens (``mass``: ``[G, L*H, N]`` with heads
    layer-major, AT2's feature order)."""
    return mass[:answer_tokens].float().mean(dim=0).T.contiguous()


@dataclass(frozen=True)
class TrainingExample:
    features: torch.Tensor      # [N, F]
    masks: np.ndarray           # [M, N] bool, True = kept
    outputs: np.ndarray         # [M] AT2's aggregated logit-probability of the answer


def at2_outputs(logit_probs: np.ndarray) -> np.ndarray:
    from at2.attribution.utils import aggregate_logit_probs
    return aggregate_logit_probs(logit_probs)


def train_at2(examples: Sequence[TrainingExample], num_layers: int, num_heads: int,
              seed: int = 0) -> torch.Tensor:
    """Learn AT2's per-head weights ``[L*H]`` on ``examples`` (every example in every step:
    the package samples 512 per step, more than we have)."""
    from at2.attribution.features import AttentionFeatureExtractor
    from at2.attribution.score_estimators import LinearScoreEstimator
    from at2.attribution.trainer import PearsonCorrelationLoss

    torch.manual_seed(seed)
    estimator = LinearScoreEstimator(AttentionFeatureExtractor(num_layers, num_heads))
    # AT2's trainer: features of a masked prompt = (±1 keep mask) @ per-document features.
    x = torch.stack([(torch.tensor(e.masks, dtype=torch.float32) * 2 - 1) @ e.features.float()
                     for e in examples])                                    # [B, M, F]
    y = torch.stack([torch.tensor(e.outputs, dtype=torch.float32) for e in examples])  # [B, M]
    opt = torch.optim.Adam(estimator.parameters(), lr=AT2_LR)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=AT2_ITERATIONS)
    loss_fn = PearsonCorrelationLoss()
    for _ in range(AT2_ITERATIONS):
        opt.zero_grad()
        loss = loss_fn(estimator(x)[:, :, 0], y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(estimator.parameters(), max_norm=AT2_MAX_GRAD_NORM)
        opt.step()
        sched.step()
        estimator.project_parameters()
    estimator.finalize_parameters()
    return estimator.linear.weight.detach()[0].clone()


def at2_scores(weights: torch.Tensor, features: torch.Tensor) -> list[float]:
    """Per-document AT2 scores: the weighted head mass."""
    return (features.float() @ weights.float()).tolist()
