"""Scoring backends: engines that turn scoring prompts into per-head attention mass.

Every backend implements :class:`ScoringBackend`; the ranker and the detection job only use
that protocol. ``transformers`` is the reference port (the oracle); ``vllm`` is the engine hook.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import torch

from qrhead_vllm.core import Head, ScoringPrompt
from qrhead_vllm.heads import ModelFacts


@dataclass(frozen=True)
class MassRequest:
    """One query to score: its prompt, its calibration twin, and the heads to read."""

    real: ScoringPrompt
    null: ScoringPrompt | None
    heads: tuple[Head, ...]

    @property
    def prompt_tokens(self) -> int:
        """Tokens the engine prefills for this query: the real prompt plus its null twin."""
        return self.real.num_tokens + (self.null.num_tokens if self.null is not None else 0)


@dataclass(frozen=True)
class MassResult:
    """Mean attention rows of the query span (``[len(heads), T]`` fp32) for both passes."""

    real: torch.Tensor
    null: torch.Tensor | None
    null_cached_tokens: int | None = None   # prefix-cache hits of the null pass, if known


class ScoringBackend(Protocol):
    """What the ranker and the detection job need from an engine."""

    tokenizer: object
    hf_config: object        # the model's transformers config (model_type, sliding windows)
    facts: ModelFacts
    max_model_len: int

    def attention_mass(self, requests: Sequence[MassRequest]) -> list[MassResult]:
        """Prefill every request (and its null twin) and return its per-head mass rows."""
        ...

    def close(self) -> None:
        """Release the engine."""
        ...
