"""LLM re-rankers for the bench: several head sets (detected, all = ICR, random draws) on one
engine, through the public QRHeadRanker API.

Model loading and prefill dominate the cost, and every head set reads the same prompts. So the
engine is built once and wrapped in :class:`SharedMassBackend`, which prefills each prompt once
for the union of all head sets' heads and hands every ranker the rows of its own heads. The
rows of one head do not depend on which other heads are captured alongside it, so the numbers
are those of separate runs (tests/test_bench_quality.py checks this) at the cost of one.
"""

from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from qrhead_vllm.backends import InThread, MassRequest, MassResult
from qrhead_vllm.datasets import Example
from qrhead_vllm.errors import HeadConfigError
from qrhead_vllm.ranker import QRHeadRanker
from qrhead_vllm.scorers import DEFAULT_METHOD

from bench.quality.metrics import Runs


@dataclass(frozen=True)
class HeadSet:
    """One LLM row of the table: what to pass as ``heads=`` and ``method=``, and its label."""

    label: str
    heads: Any
    draw: int | None = None        # seed of a random draw (draws are averaged into one row)
    method: str = DEFAULT_METHOD   # a qrhead_vllm.scorers name


class SharedMassBackend(InThread):
    """A ScoringBackend that prefills each prompt once for the union of the head sets."""

    def __init__(self, inner):
        self.inner = inner
        self.union: tuple = ()
        self._index: dict = {}
        self._cache: dict = {}

    def __getattr__(self, name):             # tokenizer, hf_config, facts, max_model_len, ...
        return getattr(self.inner, name)

    def share(self, head_lists: Sequence[Sequence[tuple[int, int]]]) -> None:
        union = dict.fromkeys(h for heads in head_lists for h in heads)   # ordered, unique
        self.union, self._index = tuple(union), {h: i for i, h in enumerate(union)}

    def attention_mass(self, requests: Sequence[MassRequest]) -> list[MassResult]:
        keys = [(r.real.token_ids, r.null.token_ids if r.null else None) for r in requests]
        todo = {k: r for k, r in zip(keys, requests) if k not in self._cache}
        if todo:                              # one batched engine call for every new prompt
            full = self.inner.attention_mass(
                [MassRequest(r.real, r.null, self.union) for r in todo.values()])
            self._cache.update(zip(todo, full))
        return [self._rows(self._cache[k], r.heads) for k, r in zip(keys, requests)]

    def _rows(self, mass: MassResult, heads) -> MassResult:
        idx = torch.tensor([self._index[h] for h in heads])
        return MassResult(mass.real[idx], None if mass.null is None else mass.null[idx])

    def clear(self) -> None:
        self._cache.clear()

    def close(self) -> None:
        self.inner.close()


def random_head_sets(facts, num_heads: int, draws: int) -> list[HeadSet]:
    """``draws`` seeded uniform samples of ``num_heads`` (layer, head) pairs (seeds 0..draws-1)."""
    pairs = [(l, h) for l in range(facts.num_layers) for h in range(facts.num_heads)]
    return [HeadSet(f"random {num_heads} heads", random.Random(s).sample(pairs, num_heads), s)
            for s in range(draws)]


def build_rankers(model: str, backend, sets: Sequence[HeadSet], notes: list[str], **kw
                  ) -> list[tuple[HeadSet, QRHeadRanker]]:
    """A ranker per head set on the shared backend; a set that cannot load becomes a note."""
    out = []
    for s in sets:
        try:
            out.append((s, QRHeadRanker(model, heads=s.heads, method=s.method, backend=backend,
                                        **kw)))
        except HeadConfigError as e:
            notes.append(f"{s.label}: not available ({e})")
    return out


def run_rankers(rankers: Sequence[tuple[HeadSet, QRHeadRanker]], examples: Sequence[Example],
                batch: int = 1) -> list[Runs]:
    """Rank every example with every ranker → one run (qid → doc ids, best first) per ranker.

    Candidates go in first-stage order; the rankers' own ``reverse_order`` and ``window``
    decide the prompt order and how lists longer than one prompt are windowed.
    """
    shared = rankers[0][1].backend if rankers else None
    runs: list[Runs] = [{} for _ in rankers]
    t0 = time.perf_counter()
    for start in range(0, len(examples), batch):
        chunk = examples[start:start + batch]
        items = [(e.query, list(e.documents), None) for e in chunk]
        for (_, ranker), run in zip(rankers, runs):
            for e, res in zip(chunk, ranker.rank_many(items)):
                run[e.qid] = [str(r.doc_id) for r in res.results]
        if isinstance(shared, SharedMassBackend):
            shared.clear()                    # keep memory to one batch of prompts
        done = start + len(chunk)
        print(f"  ranked {done}/{len(examples)} queries, {time.perf_counter() - t0:.0f}s",
              file=sys.stderr, flush=True)
    return runs


def llm_runs(model: str, engine, sets: Sequence[HeadSet], examples: Sequence[Example],
             notes: list[str], batch: int = 1, **ranker_kw) -> list[tuple[HeadSet, Runs, Any]]:
    """All head sets of one engine over the examples, prefilling each prompt once.

    ``ranker_kw`` go to every QRHeadRanker (``reverse_order``, ``window``, ``max_words``).
    Returns (head set, run, the HeadConfig the ranker loaded or None for all heads).
    """
    shared = SharedMassBackend(engine)
    rankers = build_rankers(model, shared, sets, notes, **ranker_kw)
    shared.share([r.head_pairs for _, r in rankers])
    runs = run_rankers(rankers, examples, batch)
    return [(s, run, r.heads) for (s, r), run in zip(rankers, runs)]
