"""Reading keys out of vLLM's paged KV cache, and proving at start-up that we read them right.

Every reader returns a strided *view* of shape ``[num_blocks, block_size, num_kv_heads, D]``
(the core's paged-key shape) without copying, plus the backend's sliding window in tokens.

* CPU_ATTN, ISA ``vec`` (x86 without AMX; the AVX-512 and the AVX2 kernel builds both use it):
  the nominal shape ``[nb, Hkv, bs, 2*D]`` is not what is stored; per (block, kv head) the first
  ``bs*D`` elements are the keys transposed to ``[D, bs]`` (element ``e`` of in-block token ``t``
  at offset ``e*bs + t``), then the values; found by reading the cache, proven per layer below.
* CPU_ATTN, ISA ``amx`` (bf16 engines on CPUs with AMX tiles): same ``[nb, Hkv, 2*bs*D]`` split,
  but the keys are packed for AMX B tiles (``AttentionImpl<ISA::AMX>::reshape_and_cache`` in
  vLLM 0.32's ``csrc/cpu/cpu_attn_amx.hpp``): tokens in groups of 16 (one 64-byte tile row of
  4-byte words), and within a group word ``j`` (head dims ``2j, 2j+1`` in bf16) of the 16
  tokens side by side: ``[bs/16, D/2, 16, 2]``. No strides give that as ``[nb, bs, Hkv, D]``,
  so the view is the tiled 6-d form the core's ``paged_blocks`` reads.
* FLASH_ATTN: ``kv_cache.transpose(1, 2).split(D, -1)`` is an honest ``[nb, bs, Hkv, D]`` view.

Two start-up checks per attention layer (:func:`verify_layer`), so an engine we cannot read
fails once when it starts, never with a wrong score later:

1. policy: only the configurations verified end to end against the reference port are
   accepted (``VERIFIED``), and ``amx`` on the probe alone (``PROBE_ONLY``: its layout is
   unit-tested on CPU tensors; the end-to-end test runs only on AMX CPUs, marker ``amx``);
   fp8/quantised KV caches, other CPU ISAs (``vec16``, ``neon``...), other backends and non-softmax attention (ALiBi, soft-capped logits, sinks,
   encoder attention) are refused with the reason;
2. a probe: known keys are written through the backend's own ``do_kv_cache_update`` into a
   scratch block and read back through our view; any difference refuses the engine.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

from qrhead_vllm.core import paged_blocks
from qrhead_vllm.errors import EngineCompatibilityError

logger = logging.getLogger(__name__)
KeyView = Callable[[torch.Tensor], torch.Tensor]
PROBE_BLOCK = 0  # vLLM's null block: never holds a request's tokens; restored after the probe
AMX_TILE_ROW_BYTES = 64  # one AMX tile row; the kernel groups 64 / 4 = 16 tokens per row


def cpu_vec_keys(kv_cache: torch.Tensor) -> torch.Tensor:
    nb, hkv, bs, two_d = kv_cache.shape
    d = two_d // 2
    keys = kv_cache.view(nb, hkv, 2 * bs * d)[:, :, : bs * d].view(nb, hkv, d, bs)
    return keys.permute(0, 3, 1, 2)


def cpu_amx_keys(kv_cache: torch.Tensor) -> torch.Tensor:
    nb, hkv, bs, two_d = kv_cache.shape
    d = two_d // 2
    pack = 4 // kv_cache.element_size()             # elements per 4-byte word (bf16: 2)
    group = AMX_TILE_ROW_BYTES // 4                 # tokens per group (16)
    keys = kv_cache.view(nb, hkv, 2 * bs * d)[:, :, : bs * d]
    keys = keys.view(nb, hkv, bs // group, d // pack, group, pack)
    return keys.permute(0, 2, 4, 1, 3, 5)           # [nb, bs/16, 16, Hkv, D/2, 2]


def flash_keys(kv_cache: torch.Tensor) -> torch.Tensor:
    d = kv_cache.shape[-1] // 2
    return kv_cache.transpose(1, 2)[..., :d]


# (backend impl class, CPU ISA or None) -> key view: exactly what the equivalence tests cover.
VERIFIED: dict[tuple[str, str | None], KeyView] = {
    ("CPUAttentionBackendImpl", "vec"): cpu_vec_keys,
    ("FlashAttentionImpl", None): flash_keys,
    ("CPUAttentionBackendImpl", "amx"): cpu_amx_keys,
}
# Accepted only because the start-up probe passed on this machine (not yet run end to end).
PROBE_ONLY = {("CPUAttentionBackendImpl", "amx")}


def key_view_for(impl, layer) -> KeyView:
    """The key reader of a verified configuration; raises with the reason otherwise.

    Raises:
        EngineCompatibilityError: unverified backend or CPU ISA, a quantised KV cache, or
            attention that is not plain causal softmax.
    """
    name = type(impl).__name__
    if getattr(impl, "kv_cache_dtype", "auto") not in ("auto", None):
        raise EngineCompatibilityError(
            f"qrhead-vllm cannot read a {impl.kv_cache_dtype} KV cache (scores would need its "
            "scales); start the engine with kv_cache_dtype=auto")
    _check_plain_softmax(impl)
    isa = getattr(layer, "isa", None) if name == "CPUAttentionBackendImpl" else None
    view = VERIFIED.get((name, isa))
    if view is None:
        where = f"CPU attention ISA {isa!r}" if name == "CPUAttentionBackendImpl" \
            else f"attention backend {name}"
        raise EngineCompatibilityError(
            f"{where} is not verified by qrhead-vllm (verified: "
            f"{sorted(f'{b}/{i}' if i else b for b, i in VERIFIED)}); its KV layout and "
            "kernels have not been checked against the reference scores")
    return view


def _check_plain_softmax(impl) -> None:
    """Refuse attention our softmax rows would not reproduce."""
    reasons = []
    if getattr(impl, "alibi_slopes", None) is not None:
        reasons.append("ALiBi position biases")
    if getattr(impl, "logits_soft_cap", None):
        reasons.append(f"soft-capped logits ({impl.logits_soft_cap})")
    if getattr(impl, "sinks", None) is not None:
        reasons.append("attention sinks")
    if str(getattr(impl, "attn_type", "decoder")).lower().split(".")[-1] != "decoder":
        reasons.append(f"{impl.attn_type} attention")
    if reasons:
        raise EngineCompatibilityError(
            f"qrhead-vllm scores plain causal softmax attention; this model's layers use "
            f"{', '.join(reasons)}")


def probe_layout(impl, layer, kv_cache: torch.Tensor, view: KeyView) -> None:
    """Write known keys through the backend's cache-update path and read them back.

    Raises:
        EngineCompatibilityError: the keys read through ``view`` differ from those written.
    """
    keys_view = view(kv_cache)
    block = torch.tensor([PROBE_BLOCK], device=kv_cache.device)
    _, bs, hkv, d = paged_blocks(keys_view, block).shape
    saved = kv_cache[PROBE_BLOCK].clone()
    gen = torch.Generator().manual_seed(0)
    key = torch.randn(bs, hkv, d, generator=gen).to(kv_cache.dtype).to(kv_cache.device)
    value = torch.randn(bs, hkv, d, generator=gen).to(kv_cache.dtype).to(kv_cache.device)
    slots = torch.arange(PROBE_BLOCK * bs, (PROBE_BLOCK + 1) * bs, device=kv_cache.device)
    try:
        impl.do_kv_cache_update(layer, key, value, kv_cache, slots)
        read = paged_blocks(keys_view, block)[0]
        same = torch.equal(read, key)
    finally:
        kv_cache[PROBE_BLOCK].copy_(saved)
    if not same:
        raise EngineCompatibilityError(
            f"KV layout probe failed on {getattr(layer, 'layer_name', '?')} "
            f"({type(impl).__name__}, ISA {getattr(layer, 'isa', None)!r}): keys written through "
            "the backend read back differently through qrhead-vllm's view; this engine's KV "
            "layout is not the one qrhead-vllm was verified on")


def verify_layer(impl, layer) -> KeyView:
    """Both start-up checks for one attention layer; returns its verified key view."""
    view = key_view_for(impl, layer)
    probe_layout(impl, layer, layer.kv_cache, view)
    config = (type(impl).__name__, getattr(layer, "isa", None))
    if config in PROBE_ONLY:
        logger.info("%s: %s/%s accepted: its KV layout probe passed on this machine",
                    getattr(layer, "layer_name", "?"), *config)
    return view


def sliding_window_of(impl) -> int | None:
    """Window in tokens (a row at p sees p-W+1..p), or None for full attention."""
    w = getattr(impl, "sliding_window", None)
    if isinstance(w, tuple):            # FlashAttention stores (W-1, 0)
        return None if w[0] < 0 else w[0] + 1
    return None if w is None or w < 0 else int(w)
