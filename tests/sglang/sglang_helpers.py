"""Shared pieces of the SGLang tests: head sets, tolerances and the equivalence assertion."""

from __future__ import annotations

import torch

from qrhead_vllm.core import score_documents

# SmolLM2 (30 layers, 9 q / 3 kv heads): early, middle and last layers, all three KV groups
# (the same set the vLLM hook tests use).
SMOLLM2_HEADS = [(2, 0), (5, 4), (9, 8), (14, 1), (17, 5), (22, 7), (29, 3)]
# Gemma 3 270M (18 layers, 4 q / 1 kv head; every 6th layer global, the rest sliding-window 512):
# heads in sliding and global layers.
GEMMA3_HEADS = [(0, 1), (3, 2), (5, 0), (8, 3), (11, 1), (14, 2), (17, 0)]
TOLERANCE = 1e-4


def max_diff(got, want) -> float:
    return (got - want).abs().max().item()


def assert_equivalent(got, want, req) -> None:
    """Rows within 1e-4 of the reference port, both passes, and the same document ranking."""
    assert got.real.shape == want.real.shape
    assert max_diff(got.real, want.real) <= TOLERANCE, max_diff(got.real, want.real)
    assert max_diff(got.null, want.null) <= TOLERANCE, max_diff(got.null, want.null)
    a = score_documents(got.real, got.null, req.real.doc_spans)
    b = score_documents(want.real, want.null, req.real.doc_spans)
    assert torch.equal(torch.argsort(a, descending=True), torch.argsort(b, descending=True))


def cold_then_warm_hits(backend, req, want, tol: float = 1e-4) -> list[int]:
    """Prefill ``req``'s real prompt twice from a flushed radix cache; each pass's rows must
    equal ``want.real``. Returns the radix hit (cached tokens) of each pass."""
    from qrhead_vllm.integration.sglang.results import decode_result
    assert backend.engine.flush_cache().success
    hits = []
    for _ in range(2):
        [out] = backend._prefill([(req.real, req.heads)])
        hits.append(int(out["meta_info"]["cached_tokens"]))
        assert max_diff(decode_result(out["meta_info"], len(req.heads)), want.real) <= tol
    return hits
