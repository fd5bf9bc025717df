"""Proving at start-up that we read SGLang's KV pool right, and refusing what we cannot score.

The capture reads keys as SGLang's own ``TorchNativeAttnBackend`` does: the request's row of
``req_to_token`` gives token slots, ``token_to_kv_pool.get_key_buffer(layer)`` is
``[slots, H_kv, D]`` (NHD). :func:`verify_runner` runs once per scheduler, after the pools,
attention backends and graphs exist (``ModelRunner.init_cuda_graphs``), and raises
:class:`EngineCompatibilityError` (the scheduler then dies at start-up with that message) on:

* engine shapes whose results we could not return whole: tensor / pipeline / attention-data
  parallelism, speculative decoding;
* prefill CUDA graphs (a replayed graph never calls our ``RadixAttention`` wrapper);
* a KV pool other than the plain NHD ``MHATokenToKVPool``: hybrid sliding-window pools
  (start with ``disable_hybrid_swa_memory=True``), fp8/fp4/quantised KV, HND or AITER 5-d
  layouts, the unified pool's logical slot ids;
* attention our softmax rows would not reproduce: logit soft-capping, cross/encoder attention,
  chunked (iRoPE) attention, temperature-scaled attention;
* an attention backend nobody checked (:data:`ACCEPTED_BACKENDS`);

and finally writes known keys through the pool's own ``set_kv_buffer`` into the reserved
padding slot 0 of every layer and reads them back through our view (then restores the slot).
"""

from __future__ import annotations

import torch

from qrhead_vllm.core import gather_paged_keys
from qrhead_vllm.errors import EngineCompatibilityError

PROBE_SLOT = 0  # SGLang's padding slot: never holds a request's token; restored after the probe
# Backends that read keys from the same NHD token pool through req_to_token. Only
# torch_native ran end to end (CPU); the GPU ones are accepted on the strength of the start-up
# probe and the per-request self-check, and have not been run (no GPU here).
ACCEPTED_BACKENDS = {"TorchNativeAttnBackend": "verified (CPU)",
                     "TritonAttnBackend": "not yet run", "FlashInferAttnBackend": "not yet run",
                     "FlashAttentionBackend": "not yet run"}


def refuse(what: str, fix: str) -> None:
    raise EngineCompatibilityError(f"qrhead-vllm cannot score on this SGLang engine: {what}; {fix}")


def check_server_args(args) -> None:
    """Engine arguments we refuse before anything loads (also run by our Python API)."""
    if (getattr(args, "tp_size", 1) or 1) > 1:
        refuse(f"tp_size={args.tp_size} (only attention-TP rank 0 returns outputs, and the "
               "gather of the other ranks' heads is not implemented)", "use tp_size=1")
    if (getattr(args, "pp_size", 1) or 1) > 1:
        refuse(f"pp_size={args.pp_size} (a request's heads would live on several stages)",
               "use pp_size=1")
    if getattr(args, "enable_dp_attention", False):
        refuse("data-parallel attention", "start without enable_dp_attention")
    if getattr(args, "speculative_algorithm", None):
        refuse(f"speculative decoding ({args.speculative_algorithm}): draft and verify "
               "extends would be captured", "start without speculative_algorithm")
    kv = str(getattr(args, "kv_cache_dtype", "auto") or "auto")
    if kv not in ("auto", "float32", "bfloat16", "float16"):
        refuse(f"a {kv} KV cache (its keys are quantised)", "use kv_cache_dtype='auto'")


def check_runner(runner) -> None:
    """Everything but the probe, on a model runner whose pools and graphs exist."""
    check_server_args(runner.server_args)
    graph = getattr(runner, "prefill_cuda_graph_runner", None)
    if graph is not None and type(graph).__name__ != "EagerRunner":
        refuse("prefill CUDA graphs are on (a replayed graph never calls the capture hook)",
               "start with disable_prefill_cuda_graph=True")
    backend = type(runner.attn_backend).__name__
    if backend not in ACCEPTED_BACKENDS:
        refuse(f"attention backend {backend} was never checked against the reference scores "
               f"(accepted: {sorted(ACCEPTED_BACKENDS)})", "use attention_backend='torch_native' "
               "on CPU, 'triton'/'flashinfer'/'fa3' on GPU")
    _check_pool(runner)
    for layer in attention_layers(runner.model):
        _check_layer(layer)


def _check_pool(runner) -> None:
    pool = runner.token_to_kv_pool
    name = type(pool).__name__
    if getattr(runner, "is_hybrid_swa", False) or "SWA" in name:
        refuse(f"the hybrid sliding-window KV pool ({name}) keeps sliding layers' keys in a "
               "separate, translated pool", "start with disable_hybrid_swa_memory=True")
    if name != "MHATokenToKVPool":
        refuse(f"KV pool {name} (only the plain NHD MHATokenToKVPool is read)",
               "use an MHA model with kv_cache_dtype='auto'")
    if getattr(pool, "is_quantized_kv_cache", False) or pool.store_dtype != pool.dtype:
        refuse(f"a quantised KV cache (stored as {pool.store_dtype})", "use kv_cache_dtype='auto'")
    layout = getattr(pool, "kv_cache_layout", "nhd")
    if getattr(pool, "use_hnd", False) or layout != "nhd":
        refuse(f"the {layout} KV layout", "unset SGLANG_USE_HND_KVCACHE / the AITER layout")
    if getattr(pool, "requires_physical_write_loc", False):
        refuse("the unified memory pool (req_to_token holds logical ids)",
               "start without enable_unified_memory")


def _check_layer(layer) -> None:
    reasons = []
    if getattr(layer, "logit_cap", 0):
        reasons.append(f"soft-capped logits ({layer.logit_cap})")
    if getattr(layer, "is_cross_attention", False):
        reasons.append("cross-attention")
    if str(getattr(layer, "attn_type", "decoder")).lower().split(".")[-1] != "decoder":
        reasons.append(f"{layer.attn_type} attention")
    if getattr(layer, "use_irope", False):
        reasons.append("chunked (iRoPE) attention")
    if getattr(layer, "xai_temperature_len", -1) > 0:
        reasons.append("temperature-scaled attention")
    if reasons:
        refuse(f"layer {layer.layer_id} uses {', '.join(reasons)}", "QRHead scores plain causal "
               "softmax attention")


def attention_layers(model) -> list:
    """Every ``RadixAttention`` module of the model, in layer order."""
    from sglang.srt.layers.radix_attention import RadixAttention
    layers = [m for m in model.modules() if isinstance(m, RadixAttention)]
    return sorted(layers, key=lambda m: m.layer_id)


def probe_layer(pool, layer) -> None:
    """Write known keys through the pool's own write path, read them back through our view.

    Raises:
        EngineCompatibilityError: the keys read back differ from those written.
    """
    from sglang.srt.mem_cache.memory_pool import KVWriteLoc
    buffer = pool.get_key_buffer(layer.layer_id)
    hkv, d = buffer.shape[1], buffer.shape[2]
    loc = torch.tensor([PROBE_SLOT], dtype=torch.int64, device=buffer.device)
    saved_k = buffer[PROBE_SLOT].clone()
    saved_v = pool.get_value_buffer(layer.layer_id)[PROBE_SLOT].clone()
    gen = torch.Generator().manual_seed(layer.layer_id)
    key = torch.randn(1, hkv, d, generator=gen).to(buffer.dtype).to(buffer.device)
    value = torch.randn(1, hkv, saved_v.shape[-1], generator=gen).to(buffer.dtype).to(buffer.device)
    try:
        pool.set_kv_buffer(layer, KVWriteLoc(loc, physical=True), key, value)
        read = gather_paged_keys(pool.get_key_buffer(layer.layer_id).unsqueeze(1), loc, 1)
        same = torch.equal(read.transpose(0, 1), key)
    finally:
        pool.set_kv_buffer(layer, KVWriteLoc(loc, physical=True), saved_k[None], saved_v[None])
    if not same:
        raise EngineCompatibilityError(
            f"KV layout probe failed on layer {layer.layer_id} ({type(pool).__name__}): keys "
            "written through the pool read back differently through qrhead-vllm's view; this "
            "engine's KV layout is not the one qrhead-vllm was verified on")


def verify_runner(runner) -> list:
    """All start-up checks of one (non-draft) model runner; returns its attention layers."""
    check_runner(runner)
    layers = attention_layers(runner.model)
    for layer in layers:
        probe_layer(runner.token_to_kv_pool, layer)
    return layers
