"""Selected-head attention rows of the query span, from dense or paged keys.

Nothing here materialises an [H, T, T] matrix: for one layer we compute, for the selected query
heads only, the softmax rows of the query-span positions against all keys (fp32, logsumexp over
every key the position can see), and immediately sum them over the span rows. Summing (not
averaging) lets the rows of one query span arrive in several prefill chunks and simply add up.
Decode-time rows (:func:`span_mass_rows`) are kept one per query token but reduced at once to
their mass on each document span, so what outlives a layer is ``[n, H_sel, N]``.

Shapes use vLLM's nouns: ``block_table`` rows of physical block ids, ``block_size`` tokens per
block, keys laid out ``[num_blocks, block_size, num_kv_heads, head_size]`` (FlashAttention's
view; other layouts are converted to a strided view of this shape by their integration).
"""

from __future__ import annotations

from itertools import groupby
from typing import Sequence

import torch


def gather_paged_keys(key_cache: torch.Tensor, block_table_row: torch.Tensor, seq_len: int
                      ) -> torch.Tensor:
    """Keys of positions ``0..seq_len-1`` of one sequence, from a paged cache.

    Args:
        key_cache: ``[num_blocks, block_size, num_kv_heads, head_size]`` (may be a strided view)
            or the tiled form :func:`paged_blocks` reads.
        block_table_row: physical block ids of the sequence, in logical order.
        seq_len: number of tokens of the sequence present in the cache.

    Returns:
        ``[num_kv_heads, seq_len, head_size]``.
    """
    block_size = key_cache.shape[1] * (key_cache.shape[2] if key_cache.dim() == 6 else 1)
    num_blocks = -(-seq_len // block_size)
    blocks = paged_blocks(key_cache, block_table_row[:num_blocks].long())   # [n, bs, Hkv, D]
    keys = blocks.permute(2, 0, 1, 3).reshape(blocks.shape[2], -1, blocks.shape[3])
    return keys[:, :seq_len]


def paged_blocks(key_cache: torch.Tensor, block_ids: torch.Tensor) -> torch.Tensor:
    """Blocks ``block_ids`` of a paged key cache as ``[n, block_size, num_kv_heads, head_size]``.

    ``key_cache`` is that shape (possibly strided), or the *tiled* form
    ``[num_blocks, groups, group_tokens, num_kv_heads, head_size // pack, pack]`` of kernels
    that store a block's tokens in groups and head dims packed into words (vLLM's CPU AMX
    kernel): no strides express it as 4-d, so the gathered blocks are reshaped (one copy, as
    the gather is anyway).
    """
    blocks = key_cache[block_ids]
    if blocks.dim() == 6:
        n, groups, tokens, hkv, words, pack = blocks.shape
        blocks = blocks.reshape(n, groups * tokens, hkv, words * pack)
    return blocks


def span_attention_rows(query: torch.Tensor, keys: torch.Tensor, positions: torch.Tensor,
                        kv_head_of: Sequence[int], scale: float,
                        sliding_window: int | None = None, key_offset: int = 0) -> torch.Tensor:
    """Sum over query rows of each selected head's causal softmax attention row.

    Args:
        query: ``[n, H_sel, D]`` post-RoPE queries of the selected heads at ``positions``.
        keys: ``[H_kv, S, D]`` post-RoPE keys of positions ``key_offset..key_offset+S-1``, which
            must include every key a row can see.
        positions: ``[n]`` absolute positions of the query rows.
        kv_head_of: index into ``keys``' first dim for each selected head (GQA), as Python ints
            (grouping them never waits on the device; heads sorted by KV head are sliced, not
            gathered).
        scale: the layer's softmax scale (``1/sqrt(D)`` for most models).
        sliding_window: if set, a row at position p sees keys ``p-W+1..p`` only.
        key_offset: absolute position of ``keys[:, 0]`` (a sliding-window cache may drop old keys).

    Returns:
        ``[H_sel, S]`` fp32, Σ over the n rows of softmax over keys (each row sums to 1),
        column j being absolute position ``key_offset + j``.
    """
    out = torch.empty(query.shape[1], keys.shape[1], dtype=torch.float32, device=keys.device)
    for sel, probs in _group_softmax(query, keys, positions, kv_head_of, scale, sliding_window,
                                     key_offset):
        out[sel] = probs.sum(dim=1)
        del probs
    return out


def span_mass_rows(query: torch.Tensor, keys: torch.Tensor, positions: torch.Tensor,
                   kv_head_of: Sequence[int], scale: float, span_matrix: torch.Tensor,
                   sliding_window: int | None = None, key_offset: int = 0) -> torch.Tensor:
    """Each query row's attention mass on each span (decode-time citations): the causal
    softmax row of every selected head over all the keys it can see, summed over each span.

    Args:
        span_matrix: ``[P, N]`` fp32, 1 where prompt position ``p`` lies in span ``j`` (see
            :func:`span_matrix`); spans lie before ``P``, keys past it carry no span.
        Others as :func:`span_attention_rows`.

    Returns:
        ``[n, H_sel, N]`` fp32, one row per query row (not summed over rows).
    """
    n, num_sel = query.shape[:2]
    covered = max(0, min(span_matrix.shape[0] - key_offset, keys.shape[1]))
    spans = span_matrix[key_offset:key_offset + covered]
    out = torch.empty(n, num_sel, span_matrix.shape[1], dtype=torch.float32, device=keys.device)
    for sel, probs in _group_softmax(query, keys, positions, kv_head_of, scale, sliding_window,
                                     key_offset):
        out[:, sel] = (probs[..., :covered] @ spans).transpose(0, 1)        # [n, h, N]
        del probs
    return out


def paged_span_mass(query: torch.Tensor, key_cache: torch.Tensor, block_row: torch.Tensor,
                    positions: Sequence[int], kv_head_of: Sequence[int], scale: float,
                    span_matrix: torch.Tensor, sliding_window: int | None = None
                    ) -> torch.Tensor:
    """:func:`span_mass_rows` of one sequence's rows, keys read straight from the paged cache:
    per KV head one gather of that head's blocks (never the other heads', never a
    ``[H_kv, S, D]`` copy), one matmul, one softmax.

    Args:
        query: ``[n, H_sel, D]`` the selected heads' queries at ``positions`` (host ints: no
            device sync to size the gather).
        key_cache: as :func:`gather_paged_keys`.
        block_row: the sequence's physical block ids, at least up to its newest position.
        span_matrix: ``[P, N]`` (:func:`span_matrix`).

    Returns:
        ``[n, H_sel, N]`` fp32.
    """
    n, num_sel, _ = query.shape
    block_size = key_cache.shape[1] * (key_cache.shape[2] if key_cache.dim() == 6 else 1)
    num_blocks = max(positions) // block_size + 1
    blocks = block_row[:num_blocks].long()[None]
    num_keys = min(span_matrix.shape[0], num_blocks * block_size)   # keys past P hold no span
    key_pos = torch.arange(num_blocks * block_size, device=query.device)
    pos = torch.tensor(list(positions), device=query.device)
    hidden = key_pos[None, :] > pos[:, None]                          # [n, S]
    if sliding_window is not None:
        hidden |= key_pos[None, :] <= pos[:, None] - sliding_window
    out = torch.empty(n, num_sel, span_matrix.shape[1], dtype=torch.float32,
                      device=query.device)
    for kv, sel in _kv_groups([int(k) for k in kv_head_of], query.device):
        keys_t = paged_head_keys_t(key_cache, blocks, kv)[0]            # [nb, D, bs]
        q = query[:, sel].float().mul(scale)                             # [n, h, D]
        h = q.shape[1]
        logits = q.reshape(1, n * h, -1) @ keys_t.float()                # [nb, n*h, bs]
        logits = logits.transpose(0, 1).reshape(n, h, -1)                # [n, h, S]
        logits.masked_fill_(hidden[:, None], float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        out[:, sel] = probs[..., :num_keys] @ span_matrix[:num_keys]
        del keys_t, logits, probs
    return out


def paged_keys_at(key_cache: torch.Tensor, block_ids: torch.Tensor, slots: torch.Tensor
                  ) -> torch.Tensor:
    """``[n, H_kv, D]`` the keys in slot ``slots[i]`` of block ``block_ids[i]`` (self-checks)."""
    blocks = paged_blocks(key_cache, block_ids.long())                  # [n, bs, H_kv, D]
    return blocks[torch.arange(len(block_ids), device=blocks.device), slots.long()]


def paged_head_keys_t(key_cache: torch.Tensor, block_rows: torch.Tensor, kv: int
                      ) -> torch.Tensor:
    """One KV head's keys of several sequences, block by block and transposed,
    ``[R, n, D, block_size]``, in one gather of that head only (the layouts of
    :func:`paged_blocks`): the gather copies in whichever order the cache stores a block (D
    innermost or tokens innermost); the other is a free transposed view for the matmul."""
    if key_cache.dim() == 6:       # tiled: [nb, groups, group_tokens, H_kv, words, pack]
        blocks = _gather_blocks(key_cache.select(3, kv), block_rows)
        r, n, groups, tokens, words, pack = blocks.shape
        return blocks.reshape(r, n, groups * tokens, words * pack).transpose(-1, -2)
    head = key_cache.select(2, kv)                                      # [nb, bs, D]
    if head.stride(-1) == 1:       # D innermost (FlashAttention's layout)
        return _gather_blocks(head, block_rows).transpose(-1, -2)
    return _gather_blocks(head.transpose(1, 2), block_rows)   # tokens innermost (CPU vec)


def _gather_blocks(blocks: torch.Tensor, block_rows: torch.Tensor) -> torch.Tensor:
    """``blocks[block_rows]``; as one row copy per block where a block is contiguous (CPU's
    index_select of whole rows is several times faster than advanced indexing)."""
    if blocks[0].is_contiguous():
        picked = blocks.flatten(1).index_select(0, block_rows.flatten())
        return picked.view(*block_rows.shape, *blocks.shape[1:])
    return blocks[block_rows]


def span_matrix(spans: Sequence[tuple[int, int]], num_positions: int,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """``[num_positions, len(spans)]`` fp32 membership of each position in each half-open
    span (a matmul with it sums an attention row over every span at once)."""
    out = torch.zeros(num_positions, len(spans), dtype=torch.float32, device=device)
    for j, (a, b) in enumerate(spans):
        out[a:b, j] = 1.0
    return out


def _group_softmax(query, keys, positions, kv_head_of, scale, sliding_window, key_offset):
    """``(selector, [h, n, S] fp32 causal softmax)`` for each KV group of the selected heads:
    one matmul per KV head, the query heads that share it (GQA) never repeat the keys."""
    num_keys = keys.shape[1]
    key_pos = torch.arange(key_offset, key_offset + num_keys, device=keys.device)
    pos = positions.to(keys.device).long()
    hidden = key_pos[None, :] > pos[:, None]                          # causal: [n, S]
    if sliding_window is not None:
        hidden |= key_pos[None, :] <= pos[:, None] - sliding_window
    for kv, sel in _kv_groups([int(k) for k in kv_head_of], keys.device):
        q = query[:, sel].float().mul(scale).transpose(0, 1)          # [h, n, D]
        logits = q @ keys[kv].float().T                                # [h, n, S]
        logits.masked_fill_(hidden, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        del q, logits
        yield sel, probs
        del probs  # (callers del theirs too) free this group's [h, n, S] before the next's


def _kv_groups(kv_head_of: list[int], device: torch.device):
    """(kv head, selector of its query heads): a slice for contiguous runs, else an index."""
    if all(a <= b for a, b in zip(kv_head_of, kv_head_of[1:])):
        start = 0
        for kv, run in groupby(kv_head_of):
            n = len(list(run))
            yield kv, slice(start, start + n)
            start += n
        return
    for kv in sorted(set(kv_head_of)):
        yield kv, torch.tensor([i for i, k in enumerate(kv_head_of) if k == kv], device=device)
