"""Head bookkeeping: which (layer, head) pairs a layer must capture, and on which TP rank.

vLLM shards attention heads over tensor-parallel ranks in contiguous blocks: rank r owns global
query heads ``[r*h, (r+1)*h)`` with ``h = num_heads // tp_size``. KV heads are sharded the same
way when there are at least ``tp_size`` of them, otherwise each is replicated on
``tp_size // num_kv_heads`` consecutive ranks. Inside a rank, local query head j reads local KV
head ``j // (h // h_kv)``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Sequence

Head = tuple[int, int]  # (layer, global query head), both 0-indexed


@dataclass(frozen=True)
class LocalHead:
    """A selected head as one TP rank sees it."""

    index: int          # position of the head in the caller's ordered head list
    layer: int
    local_head: int     # query head index inside this rank's shard
    local_kv_head: int  # KV head index inside this rank's shard


def heads_by_layer(heads: Iterable[Head]) -> dict[int, list[int]]:
    """Ordered head list → {layer: [query heads]} (order of first appearance kept)."""
    out: dict[int, list[int]] = defaultdict(list)
    for layer, head in heads:
        out[layer].append(head)
    return dict(out)


def beyond_last_layer(heads: Iterable[Head], last_layer: int | None) -> str | None:
    """Why ``heads`` cannot be scored by an engine that computes layers ``0..last_layer`` only
    (a score-only engine), naming the deepest layer; None when they can (or no cut)."""
    layers = [layer for layer, _ in heads]
    if last_layer is None or not layers or max(layers) <= last_layer:
        return None
    return (f"heads in layer {max(layers)} lie beyond this score-only engine's last layer "
            f"{last_layer} (layers after it are not computed); use heads in layers "
            f"0..{last_layer} or an engine with the full model")


def shard_heads(heads: Sequence[Head], num_heads: int, num_kv_heads: int, tp_size: int
                ) -> dict[int, list[LocalHead]]:
    """Map each global (layer, head) to the TP rank that owns it and its local indices.

    Raises:
        ValueError: if the head counts do not divide the way vLLM requires.
    """
    if num_heads % tp_size:
        raise ValueError(f"num_heads={num_heads} is not divisible by tp_size={tp_size}")
    if num_kv_heads % tp_size and tp_size % num_kv_heads:
        raise ValueError(f"num_kv_heads={num_kv_heads} and tp_size={tp_size} do not divide")
    heads_per_rank = num_heads // tp_size
    kv_per_rank = max(1, num_kv_heads // tp_size)
    group = heads_per_rank // kv_per_rank  # query heads per KV head inside a rank
    out: dict[int, list[LocalHead]] = {r: [] for r in range(tp_size)}
    for i, (layer, head) in enumerate(heads):
        rank, local = divmod(head, heads_per_rank)
        out[rank].append(LocalHead(i, layer, local, local // group))
    return out
