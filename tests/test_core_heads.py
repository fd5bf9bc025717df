"""Head bookkeeping: which TP rank owns a selected head, and which KV head it reads there.

The expected values are derived independently of ``shard_heads``: a query head's global KV head
is ``head // (H / H_kv)`` (HF ``repeat_kv``); vLLM gives rank r the query heads
``[r·H/tp, (r+1)·H/tp)`` and either the KV heads ``[r·H_kv/tp, (r+1)·H_kv/tp)`` (H_kv ≥ tp) or,
when KV heads are replicated (H_kv < tp), the single KV head ``r // (tp / H_kv)``.
"""

from __future__ import annotations

import pytest

from qrhead_vllm.core import LocalHead, heads_by_layer, shard_heads

LLAMA_70B = (64, 8)      # (num_heads, num_kv_heads)
QWEN25_3B = (16, 2)      # two KV heads: replicated on tp=4
LLAMA_32_3B = (24, 8)    # 3 query heads per KV head inside a tp=4 rank


def global_kv_heads_on_rank(rank: int, num_kv_heads: int, tp: int) -> list[int]:
    """The global KV heads a rank holds, in local order."""
    if num_kv_heads >= tp:
        per_rank = num_kv_heads // tp
        return list(range(rank * per_rank, (rank + 1) * per_rank))
    return [rank // (tp // num_kv_heads)]


def every_head(num_layers: int, num_heads: int) -> list[tuple[int, int]]:
    # Interleave layers and reverse heads so the caller's order differs from sorted order.
    return [(l, h) for h in reversed(range(num_heads)) for l in range(num_layers)]


@pytest.mark.parametrize("shape,tp", [
    (LLAMA_70B, 1), (LLAMA_70B, 2), (LLAMA_70B, 4), (LLAMA_70B, 8), (LLAMA_70B, 16),
    (QWEN25_3B, 4), (QWEN25_3B, 2), (LLAMA_32_3B, 4),
])
def test_shard_heads_matches_independent_derivation(shape, tp):
    num_heads, num_kv_heads = shape
    heads = every_head(2, num_heads)
    shards = shard_heads(heads, num_heads, num_kv_heads, tp)
    assert sorted(shards) == list(range(tp))
    per_rank = num_heads // tp
    seen = set()
    for rank, local_heads in shards.items():
        kv_on_rank = global_kv_heads_on_rank(rank, num_kv_heads, tp)
        for lh in local_heads:
            layer, head = heads[lh.index]
            assert lh.layer == layer
            assert head // per_rank == rank
            assert lh.local_head == head - rank * per_rank
            # The local KV index must point at the same KV head the full model would use.
            assert kv_on_rank[lh.local_kv_head] == head // (num_heads // num_kv_heads)
            seen.add(lh.index)
        # Within a rank the caller's order is kept (captures are written by index).
        indices = [lh.index for lh in local_heads]
        assert indices == sorted(indices)
    assert seen == set(range(len(heads)))  # every head lands on exactly one rank


def test_paper_70b_heads_on_tp4():
    # Three of the 70B NQ heads (docs/method.md §3.1), by hand: 16 q heads and 2 KV heads per rank,
    # 8 q heads per KV head. 31-32 → rank 2, local 0, kv 0 (global kv 4 = 32 // 8).
    # 35-26 → rank 1, local 10, kv 1 (global 3). 52-58 → rank 3, local 10, kv 1 (global 7).
    shards = shard_heads([(31, 32), (35, 26), (52, 58)], 64, 8, 4)
    assert shards[0] == []
    assert shards[1] == [LocalHead(1, 35, 10, 1)]
    assert shards[2] == [LocalHead(0, 31, 0, 0)]
    assert shards[3] == [LocalHead(2, 52, 10, 1)]


def test_replicated_kv_heads_are_all_local_zero():
    # 16 q heads, 2 KV heads, tp=4: each rank holds one (replicated) KV head, local index 0.
    shards = shard_heads([(0, h) for h in range(16)], 16, 2, 4)
    assert all(lh.local_kv_head == 0 for r in shards.values() for lh in r)
    assert [lh.local_head for lh in shards[3]] == [0, 1, 2, 3]


@pytest.mark.parametrize("num_heads,num_kv_heads,tp", [
    (64, 8, 3),    # query heads do not divide
    (24, 6, 4),    # 6 KV heads on 4 ranks: neither divides the other
])
def test_shard_heads_rejects_shapes_vllm_cannot_shard(num_heads, num_kv_heads, tp):
    with pytest.raises(ValueError, match="divi"):
        shard_heads([(0, 0)], num_heads, num_kv_heads, tp)


def test_heads_by_layer_keeps_first_appearance_order():
    heads = [(14, 22), (13, 16), (14, 28), (16, 19), (13, 0), (14, 1)]
    grouped = heads_by_layer(heads)
    assert list(grouped) == [14, 13, 16]
    assert grouped == {14: [22, 28, 1], 13: [16, 0], 16: [19]}


def test_heads_by_layer_empty():
    assert heads_by_layer([]) == {}
