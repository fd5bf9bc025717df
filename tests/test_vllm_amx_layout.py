"""The ``amx`` key view of vLLM's CPU attention, on CPU tensors laid out as the C++ writes them.

The reference writer below transcribes ``AttentionImpl<ISA::AMX>::reshape_and_cache`` (vLLM 0.32,
``csrc/cpu/cpu_attn_amx.hpp``) statement by statement: int32 ("quadword") pointers into the key
cache, ``token_num_per_group = 64 / 4`` tokens per group, word ``j`` of a token at
``group_idx * quadword_num_per_group + group_offset + j * token_num_per_group``. It shares no
code with the view, so the two only agree when the view reads that layout. Runs on any CPU: no
AMX instruction is involved in laying out or reading the cache.
"""

from __future__ import annotations

import pytest
import torch

from qrhead_vllm.core import gather_paged_keys
from qrhead_vllm.errors import EngineCompatibilityError
from qrhead_vllm.integration.vllm.kv_layout import (cpu_amx_keys, cpu_vec_keys, probe_layout,
                                                    verify_layer)

NUM_BLOCKS, NUM_KV_HEADS, BLOCK_SIZE = 5, 2, 32


def amx_reshape_and_cache(key: torch.Tensor, kv_cache: torch.Tensor, slots: torch.Tensor):
    """Write ``key`` ``[tokens, Hkv, D]`` (bf16) into ``kv_cache`` ``[nb, Hkv, bs, 2*D]`` exactly
    as the C++ kernel does (keys only; the values go to the second half and are not read)."""
    nb, hkv, bs, two_d = kv_cache.shape
    head_dim = two_d // 2
    # kv_cache.view(nb, hkv, 2*bs, D).chunk(2, dim=2)[0]: block stride 2*bs*D*hkv, head stride
    # 2*bs*D elements; as int32 words, half of each.
    cache_words = kv_cache.view(-1).view(torch.int32)
    num_blocks_stride, cache_head_num_stride = hkv * 2 * bs * head_dim // 2, 2 * bs * head_dim // 2
    key_words = key.contiguous().view(-1).view(torch.int32).view(key.shape[0], hkv, -1)
    token_num_per_group = 64 // 4
    quadword_num = head_dim // (4 // key.element_size())
    quadword_num_per_group = token_num_per_group * quadword_num
    for token_idx, pos in enumerate(slots.tolist()):
        if pos < 0:
            continue
        block_idx, block_offset = pos // bs, pos % bs
        group_idx, group_offset = block_offset // token_num_per_group, block_offset % token_num_per_group
        for head_idx in range(hkv):
            start = (block_idx * num_blocks_stride + head_idx * cache_head_num_stride
                     + group_idx * quadword_num_per_group + group_offset)
            for j in range(quadword_num):
                cache_words[start + j * token_num_per_group] = key_words[token_idx, head_idx, j]


def random_keys(tokens: int, head_dim: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(tokens, NUM_KV_HEADS, head_dim, generator=gen).to(torch.bfloat16)


def slots_of(block_table: list[int], tokens: int) -> torch.Tensor:
    return torch.tensor([block_table[s // BLOCK_SIZE] * BLOCK_SIZE + s % BLOCK_SIZE
                         for s in range(tokens)])


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("seq_len", [17, 70])
def test_amx_view_reads_the_keys_the_kernel_layout_holds(head_dim, seq_len):
    kv = torch.randn(NUM_BLOCKS, NUM_KV_HEADS, BLOCK_SIZE, 2 * head_dim).to(torch.bfloat16)
    keys = random_keys(seq_len, head_dim, seed=seq_len)
    table = [3, 0, 4]                                  # shuffled physical blocks
    amx_reshape_and_cache(keys, kv, slots_of(table, seq_len))
    got = gather_paged_keys(cpu_amx_keys(kv), torch.tensor(table), seq_len)
    assert got.shape == (NUM_KV_HEADS, seq_len, head_dim)
    assert torch.equal(got, keys.transpose(0, 1))


def test_vec_view_misreads_the_amx_layout():
    """The two layouts differ: reading AMX-packed keys with the ``vec`` view gives other keys."""
    kv = torch.zeros(NUM_BLOCKS, NUM_KV_HEADS, BLOCK_SIZE, 2 * 64, dtype=torch.bfloat16)
    keys = random_keys(BLOCK_SIZE, 64, seed=1)
    amx_reshape_and_cache(keys, kv, slots_of([2], BLOCK_SIZE))
    got = gather_paged_keys(cpu_vec_keys(kv), torch.tensor([2]), BLOCK_SIZE)
    assert not torch.equal(got, keys.transpose(0, 1))


class _AmxWriter:
    """The backend's cache-update entry point, writing through the transcribed kernel."""

    kv_cache_dtype, alibi_slopes, logits_soft_cap, sinks, attn_type = "auto", None, None, None, \
        "decoder"

    def do_kv_cache_update(self, layer, key, value, kv_cache, slot_mapping):
        amx_reshape_and_cache(key, kv_cache, slot_mapping)


class CPUAttentionBackendImpl(_AmxWriter):
    """Named as vLLM's impl, so the start-up policy looks up ``(impl, ISA)`` as in an engine."""


class _Layer:
    def __init__(self, kv_cache, isa="amx"):
        self.kv_cache, self.isa, self.layer_name = kv_cache, isa, "model.layers.0.self_attn.attn"


def test_startup_probe_accepts_amx_through_its_view_and_restores_the_block():
    kv = torch.randn(NUM_BLOCKS, NUM_KV_HEADS, BLOCK_SIZE, 2 * 64).to(torch.bfloat16)
    before = kv.clone()
    assert verify_layer(CPUAttentionBackendImpl(), _Layer(kv)) is cpu_amx_keys
    assert torch.equal(kv, before)


def test_startup_probe_refuses_amx_read_through_the_vec_view():
    """What the issue saw on an AMX Xeon with ``amx`` mapped to the ``vec`` view."""
    kv = torch.randn(NUM_BLOCKS, NUM_KV_HEADS, BLOCK_SIZE, 2 * 64).to(torch.bfloat16)
    with pytest.raises(EngineCompatibilityError, match="KV layout probe failed"):
        probe_layout(CPUAttentionBackendImpl(), _Layer(kv), kv, cpu_vec_keys)
