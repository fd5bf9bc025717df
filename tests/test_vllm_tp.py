"""Tensor parallelism on CPU (gloo): each rank captures only its own heads, the client puts the
rows back together, and the result equals the single-process reference port.

Gemma 3 270M is the bundled model whose head counts divide by 2 (4 query heads, 1 KV head, so
the KV head is replicated on both ranks); its selected heads sit in sliding-window and global
layers and on both ranks.
"""

from __future__ import annotations

import pytest

from qrhead_vllm.integration.vllm.engine_args import cpu_thread_binding
from qrhead_vllm.ranker import QRHeadRanker

HEADS = [(0, 1), (4, 3), (5, 0), (5, 2), (11, 2), (17, 1)]  # ranks 0 and 1; layers 0/4 slide


def test_cpu_thread_binding_splits_cores_per_rank():
    assert cpu_thread_binding(1, cpus=2) == "0-1"
    assert cpu_thread_binding(2, cpus=2) == "0|1"
    assert cpu_thread_binding(2, cpus=8) == "0-3|4-7"


@pytest.mark.slow
def test_tp2_equals_reference(gemma3_backend, hotpotqa_split, monkeypatch):
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    ranker = QRHeadRanker("gemma3-270m", heads=HEADS, backend="vllm", max_model_len=4096,
                          tensor_parallel_size=2, dtype="float32")   # vs the fp32 port
    try:
        example = hotpotqa_split[1][0]
        _, req = ranker.prepare(example.query, list(example.documents))
        [got] = ranker.backend.attention_mass([req])
        [want] = gemma3_backend.attention_mass([req])
        assert (got.real - want.real).abs().max() <= 1e-4
        assert (got.null - want.null).abs().max() <= 1e-4
        assert ranker.backend.stats() == [{"active": 0, "done": 0}] * 2  # one reply per rank
    finally:
        ranker.close()
