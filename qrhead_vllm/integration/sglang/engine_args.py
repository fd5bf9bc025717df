"""Arguments and environment of the SGLang engines we start (Python API, Serve app, bench).

``engine_kwargs`` gives every scoring engine the same shape (what the capture can read, sized by
what it needs) and refuses, before anything starts, what the scheduler would refuse later;
``engine_env`` sets what SGLang's processes inherit at spawn.

Memory on CPU: SGLang budgets ``mem_fraction_static`` × (memory available at start-up) for
weights + KV cache and fills the rest of it with KV slots unless ``max_total_tokens`` caps them.
A fraction that fits one box starves or overcommits another, so, as for vLLM
(``integration/memory.py``), the KV cache is sized by need:
``max_total_tokens`` = ``kv_cache_sequences`` × context, after checking weights + that KV cache
+ headroom against the memory SGLang will see; the fraction is then only a ceiling
(:data:`FRACTION`). :func:`check_pool` verifies after start-up that the pool holds a context.
"""

from __future__ import annotations

import logging
import os
from types import SimpleNamespace
from typing import Any

from qrhead_vllm.errors import InsufficientMemoryError
from qrhead_vllm.heads import ModelFacts
from qrhead_vllm.integration.engine_env import cpu_engine_env, on_cpu, scoped_env
from qrhead_vllm.integration.memory import (DEFAULT_KV_CACHE_SEQUENCES, GiB, plan_cpu_memory,
                                            weight_bytes)
from qrhead_vllm.integration.sglang.kv_layout import check_server_args

logger = logging.getLogger(__name__)
CPU_ENGINE = "SGLANG_USE_CPU_ENGINE"   # SGLang's CPU mode; read when sglang is imported
# What the capture needs on every device: eager prefill (a replayed prefill graph never calls
# the hook) and the plain KV pool (Gemma-style models default to the hybrid SWA pool).
SCORING_DEFAULTS = {"disable_prefill_cuda_graph": True, "disable_hybrid_swa_memory": True}
CPU_DEFAULTS = {"device": "cpu", "attention_backend": "torch_native"}  # x86 default needs AMX kernels
# SGLang gives the KV cache (fraction x memory before load) - weights - whatever else the node
# allocated meanwhile; a fraction cut to our need leaves a starved pool when another process
# grows during start-up (seen on the shared test box: 134 tokens). The pool is capped by
# max_total_tokens, so a generous fraction costs nothing: it only lets the cap be reached.
FRACTION = 0.9


def engine_env(qrhead: bool = True):
    """The environment an engine's processes inherit, set while it starts
    (:func:`~qrhead_vllm.integration.engine_env.scoped_env`): ``QRHEAD_ENABLED=1`` and the
    hooks installed here for hooked engines. ``SGLANG_USE_CPU_ENGINE=1`` on CPU is set for good:
    SGLang reads it when it is imported, in this process as in its children.
    """
    from qrhead_vllm.plugin_sglang import register
    if on_cpu():
        os.environ.setdefault(CPU_ENGINE, "1")
    return scoped_env(cpu_engine_env(), register if qrhead else None)


def engine_kwargs(model_path: str, dtype: str, *, qrhead: bool = True,
                  kv_cache_sequences: int = DEFAULT_KV_CACHE_SEQUENCES,
                  **overrides: Any) -> dict[str, Any]:
    """``sglang.Engine`` keyword arguments with our defaults; the caller's win.

    ``max_model_len`` is accepted as an alias of SGLang's ``context_length`` (the name the rest
    of this project uses).

    Raises:
        EngineCompatibilityError: an engine shape the capture refuses (TP/PP, quantised KV...).
        InsufficientMemoryError: the engine would not fit this machine (before it starts).
    """
    if "max_model_len" in overrides:
        overrides["context_length"] = overrides.pop("max_model_len")
    kwargs: dict[str, Any] = {"model_path": model_path, "dtype": dtype, "log_level": "warning"}
    if on_cpu():
        kwargs.update(CPU_DEFAULTS)
    if qrhead:
        kwargs.update(SCORING_DEFAULTS)
    kwargs.update(overrides)
    if qrhead:
        check_server_args(SimpleNamespace(**kwargs))
    sized = "mem_fraction_static" in overrides or "max_total_tokens" in overrides
    if on_cpu() and not sized:
        kwargs.update(cpu_memory_args(model_path, dtype, kwargs.get("context_length"),
                                      kv_cache_sequences))
    return kwargs


def cpu_memory_args(model_path: str, dtype: str, context_length: int | None,
                    kv_cache_sequences: int) -> dict[str, Any]:
    """``max_total_tokens`` and ``mem_fraction_static`` for a CPU engine that fits its node.

    Raises:
        InsufficientMemoryError: weights + KV cache + headroom exceed the available memory.
    """
    from transformers import AutoConfig
    config = AutoConfig.from_pretrained(model_path)
    text = getattr(config, "text_config", None) or config
    facts = ModelFacts.from_hf_config(config, model_path)
    context = context_length or text.max_position_embeddings
    available = available_bytes()
    try:   # SGLang's CPU pool has one token per page: no block rounding
        plan = plan_cpu_memory(facts, dtype, context, available, weight_bytes(model_path, dtype),
                               kv_cache_sequences, block_size=1)
    except InsufficientMemoryError as e:
        raise InsufficientMemoryError(f"{e} (SGLang: or pass mem_fraction_static and "
                                      "max_total_tokens yourself)") from None
    logger.info("qrhead-vllm SGLang engine memory: %s", plan.describe())
    return {"max_total_tokens": context * kv_cache_sequences, "mem_fraction_static": FRACTION}


def available_bytes() -> int:
    """The memory SGLang itself will budget from (free memory per NUMA node, cgroup-aware)."""
    from sglang.srt.utils.common import get_available_gpu_memory
    return int(get_available_gpu_memory("cpu", 0, empty_cache=False) * GiB)


def check_pool(engine, context_length: int) -> None:
    """Raise if the started engine's KV pool cannot hold one full-context request (SGLang
    shrinks the pool silently when memory ran short during its start-up).

    Raises:
        InsufficientMemoryError: naming the pool size and the knobs.
    """
    limit = engine.tokenizer_manager.max_req_input_len
    if limit is not None and limit < context_length - 8:
        raise InsufficientMemoryError(
            f"the SGLang engine's KV pool admits requests of {limit} tokens, not the "
            f"{context_length} of its context: memory ran short while it started (another "
            "process may have grown meanwhile). Free memory, lower max_model_len, or pass "
            "mem_fraction_static / max_total_tokens yourself.")
