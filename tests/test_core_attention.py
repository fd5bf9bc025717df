"""span_attention_rows and gather_paged_keys against a naive dense attention written here.

The reference materialises the full ``softmax(QKᵀ·scale)`` with a causal (and optional sliding
window) mask over every position, then keeps the query-span rows of the selected heads and sums
them. The core must give the same numbers without building that matrix, from dense keys or from
a paged cache in any of the layouts an engine hands it.
"""

from __future__ import annotations

import pytest
import torch

from qrhead_vllm.core import gather_paged_keys, span_attention_rows

NUM_HEADS, NUM_KV_HEADS, HEAD_DIM = 8, 2, 16
GROUP = NUM_HEADS // NUM_KV_HEADS
SCALE = HEAD_DIM ** -0.5
# Heads on both KV groups, out of order, to catch a GQA mapping that ignores kv_head_of.
SELECTED = [6, 1, 3, 4]
ATOL = 1e-5


def kv_head_of(heads: list[int]) -> torch.Tensor:
    """Global KV head of each query head (HF repeat_kv convention)."""
    return torch.tensor([h // GROUP for h in heads])


def dense_span_rows(q: torch.Tensor, k: torch.Tensor, span_start: int,
                    sliding_window: int | None = None) -> torch.Tensor:
    """Naive reference: full [H, T, T] attention, then Σ over query-span rows → [H, T].

    q: [H, T, D]; k: [H_kv, T, D].
    """
    t = q.shape[1]
    k_full = k.repeat_interleave(GROUP, dim=0)                         # [H, T, D]
    logits = (q @ k_full.transpose(1, 2)) * SCALE                      # [H, T, T]
    i = torch.arange(t)[:, None]
    j = torch.arange(t)[None, :]
    hidden = j > i
    if sliding_window is not None:
        hidden |= j <= i - sliding_window
    probs = torch.softmax(logits.masked_fill(hidden, float("-inf")), dim=-1)
    return probs[:, span_start:].sum(dim=1)


def random_qk(seq_len: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # Scaled up so the softmax is peaked: a wrong mask or head mapping shows up clearly.
    q = torch.randn(NUM_HEADS, seq_len, HEAD_DIM, generator=g) * 3
    k = torch.randn(NUM_KV_HEADS, seq_len, HEAD_DIM, generator=g)
    return q, k


def core_rows(q, keys, span_start, seq_len, heads=SELECTED, **kw) -> torch.Tensor:
    """Call the core the way an engine does: [n, H_sel, D] queries of the span rows."""
    query = q[heads, span_start:seq_len].transpose(0, 1)
    positions = torch.arange(span_start, seq_len)
    return span_attention_rows(query, keys, positions, kv_head_of(heads), SCALE, **kw)


@pytest.mark.parametrize("seq_len,span_start", [(23, 15), (40, 0), (17, 16)])
def test_dense_keys_match_naive_attention(seq_len, span_start):
    q, k = random_qk(seq_len)
    want = dense_span_rows(q, k, span_start)[SELECTED]
    got = core_rows(q, k, span_start, seq_len)
    assert got.shape == (len(SELECTED), seq_len)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    # Each row is a distribution, so the sum over keys is the number of span rows.
    rows = float(seq_len - span_start)
    torch.testing.assert_close(got.sum(-1), torch.full((len(SELECTED),), rows))


def test_sliding_window_matches_naive_attention():
    seq_len, span_start, window = 30, 20, 7
    q, k = random_qk(seq_len, seed=1)
    want = dense_span_rows(q, k, span_start, sliding_window=window)[SELECTED]
    got = core_rows(q, k, span_start, seq_len, sliding_window=window)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    # The window must actually hide something here, or this test proves nothing.
    assert not torch.allclose(want, dense_span_rows(q, k, span_start)[SELECTED], atol=1e-3)


def test_key_offset_drops_keys_no_row_can_see():
    """A sliding-window cache may have dropped old keys: columns start at key_offset."""
    seq_len, span_start, window = 30, 20, 7
    offset = span_start - window + 1                 # first key the first span row sees
    q, k = random_qk(seq_len, seed=2)
    full = dense_span_rows(q, k, span_start, sliding_window=window)[SELECTED]
    assert torch.count_nonzero(full[:, :offset]) == 0
    got = core_rows(q, k[:, offset:], span_start, seq_len, sliding_window=window,
                    key_offset=offset)
    assert got.shape == (len(SELECTED), seq_len - offset)
    torch.testing.assert_close(got, full[:, offset:], atol=ATOL, rtol=0)


def test_chunked_span_rows_add_up():
    """Rows of one span arriving in two prefill chunks (each seeing only keys so far) sum."""
    seq_len, span_start, split = 26, 12, 19
    q, k = random_qk(seq_len, seed=3)
    first = core_rows(q, k[:, :split], span_start, split)
    second = core_rows(q, k, split, seq_len)
    second[:, :split] += first
    torch.testing.assert_close(second, dense_span_rows(q, k, span_start)[SELECTED],
                               atol=ATOL, rtol=0)


# --- paged caches ------------------------------------------------------------------------

BLOCK_SIZE, NUM_BLOCKS = 8, 12


def shuffled_block_table(seq_len: int, seed: int = 0) -> torch.Tensor:
    """Non-contiguous, out-of-order physical blocks, padded like vLLM's block-table rows."""
    g = torch.Generator().manual_seed(seed)
    used = -(-seq_len // BLOCK_SIZE)
    perm = torch.randperm(NUM_BLOCKS, generator=g)[:used].int()
    if torch.equal(perm.sort().values, perm):  # a lucky draw in order: make it out of order
        perm = perm.flip(0)
    return torch.cat([perm, torch.zeros(3, dtype=torch.int32)])


def write_slot_keys(cache_view: torch.Tensor, block_table: torch.Tensor, k: torch.Tensor):
    """Store key of position s, kv head h at ``cache_view[bt[s // bs], s % bs, h, :]``."""
    for s in range(k.shape[1]):
        cache_view[block_table[s // BLOCK_SIZE], s % BLOCK_SIZE] = k[:, s]


def standard_cache() -> tuple[torch.Tensor, torch.Tensor]:
    """``[num_blocks, block_size, num_kv_heads, head_size]``, garbage everywhere."""
    cache = torch.randn(NUM_BLOCKS, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM)
    return cache, cache


def strided_cache() -> tuple[torch.Tensor, torch.Tensor]:
    """Stored ``[nb, Hkv, D, bs]`` and seen through a permuted (non-contiguous) view."""
    storage = torch.randn(NUM_BLOCKS, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE)
    view = storage.permute(0, 3, 1, 2)
    assert not view.is_contiguous()
    return storage, view


def flash_attention_cache() -> tuple[torch.Tensor, torch.Tensor]:
    """Nominal ``[nb, Hkv, bs, 2*D]`` (K then V in the last dim), viewed as vLLM's
    FlashAttention backend views it: ``kv.transpose(1, 2).split(D, -1)[0]`` → [nb, bs, Hkv, D]."""
    kv = torch.randn(NUM_BLOCKS, NUM_KV_HEADS, BLOCK_SIZE, 2 * HEAD_DIM)
    return kv, kv.transpose(1, 2).split(HEAD_DIM, dim=-1)[0]


@pytest.mark.parametrize("layout", [standard_cache, strided_cache, flash_attention_cache])
@pytest.mark.parametrize("seq_len", [29, 32])
def test_gather_paged_keys_is_exact(layout, seq_len):
    _, k = random_qk(seq_len, seed=4)
    storage, view = layout()
    table = shuffled_block_table(seq_len)
    write_slot_keys(view, table, k)
    got = gather_paged_keys(view, table, seq_len)
    assert got.shape == (NUM_KV_HEADS, seq_len, HEAD_DIM)
    assert torch.equal(got, k)


def test_flash_attention_view_reads_the_documented_slots():
    """The project reads slot s, kv head h as ``kv_cache[s // bs, h, s % bs, :D]``."""
    seq_len = 21
    _, k = random_qk(seq_len, seed=5)
    kv, view = flash_attention_cache()
    table = shuffled_block_table(seq_len, seed=1)
    write_slot_keys(view, table, k)
    for s in (0, 7, 8, 20):
        for h in range(NUM_KV_HEADS):
            assert torch.equal(kv[table[s // BLOCK_SIZE], h, s % BLOCK_SIZE, :HEAD_DIM], k[h, s])
    assert torch.equal(gather_paged_keys(view, table, seq_len), k)


@pytest.mark.parametrize("layout", [standard_cache, strided_cache, flash_attention_cache])
def test_paged_keys_give_dense_attention(layout):
    seq_len, span_start = 37, 28
    q, k = random_qk(seq_len, seed=6)
    _, view = layout()
    table = shuffled_block_table(seq_len, seed=2)
    write_slot_keys(view, table, k)
    keys = gather_paged_keys(view, table, seq_len)
    got = core_rows(q, keys, span_start, seq_len)
    torch.testing.assert_close(got, dense_span_rows(q, k, span_start)[SELECTED], atol=ATOL, rtol=0)
