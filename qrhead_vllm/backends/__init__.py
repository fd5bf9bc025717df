"""Scoring backends: engines that turn scoring prompts into per-head attention mass.

Every backend implements :class:`ScoringBackend`; the ranker and the detection job only use
that protocol. The engines that provide one are listed in :mod:`qrhead_vllm.engines`.
"""

from __future__ import annotations

from dataclasses import dataclass
import asyncio
import threading
from typing import Any, Protocol, Sequence

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
    """What the ranker, the detection job and the Serve servers need from an engine: every
    backend implements all of it, so no caller asks what a backend can do."""

    tokenizer: object
    hf_config: object        # the model's transformers config (model_type, sliding windows)
    facts: ModelFacts
    max_model_len: int
    engine_version: str      # the engine package's version (head-config provenance)
    last_layer: int | None   # the deepest layer the engine computes; None: the full model

    def attention_mass(self, requests: Sequence[MassRequest]) -> list[MassResult]:
        """Prefill every request (and its null twin) and return its per-head mass rows."""
        ...

    async def attention_mass_async(self, requests: Sequence[MassRequest]) -> list[MassResult]:
        """The same without blocking the caller's event loop (concurrent where the engine
        batches concurrent requests)."""
        ...

    def stats(self) -> Any:
        """The capture store's counters (requests in flight), for tests and health checks."""
        ...

    async def stats_async(self) -> Any:
        """:meth:`stats` from an event loop: a round trip to the engine (a health probe)."""
        ...

    def close(self) -> None:
        """Release the engine."""
        ...


class InThread:
    """The async half of the protocol for a backend whose engine is synchronous: the sync path
    in a worker thread, one call at a time (the engine is not re-entrant)."""

    _guard = threading.Lock()

    async def attention_mass_async(self, requests: Sequence[MassRequest]) -> list[MassResult]:
        return await asyncio.to_thread(self._locked, self.attention_mass, list(requests))

    async def stats_async(self) -> Any:
        return await asyncio.to_thread(self._locked, self.stats)

    def _locked(self, fn, *args):
        with InThread._guard:
            lock = self.__dict__.setdefault("_call_lock", threading.Lock())
        with lock:
            return fn(*args)
