"""Arguments and environment of the vLLM engines we start (Python API, Serve app, benches).

One function sizes every engine (``engine_kwargs``) and one context manager sets the
environment vLLM's processes inherit at spawn (``engine_env``), so the caller's own process is
left as it was once the engine is up.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from qrhead_vllm.errors import EngineCompatibilityError
from qrhead_vllm.heads import ModelFacts
from qrhead_vllm.integration.engine_env import (CPU_ENGINE_ENV, cpu_engine_env, on_cpu,
                                                scoped_env)
from qrhead_vllm.integration.memory import (DEFAULT_KV_CACHE_SEQUENCES, MemoryPlan,
                                            plan_cpu_memory, weight_bytes)
from qrhead_vllm.integration.vllm import WORKER_EXTENSION
from qrhead_vllm.integration.vllm.layer_cut import additional_config, check_model

logger = logging.getLogger(__name__)
ENGINE_DEFAULTS = {"enforce_eager": True, "enable_prefix_caching": True}
THREADS_BIND = "VLLM_CPU_OMP_THREADS_BIND"
CPU_BLOCK_SIZE = 128            # vLLM's CPU attention block size (tokens)


def cpu_thread_binding(tensor_parallel_size: int = 1, cpus: int | None = None) -> str:
    """``VLLM_CPU_OMP_THREADS_BIND`` giving each TP rank its own share of the cores
    ("0-1" for one rank on 2 cores, "0|1" for two)."""
    cpus = cpus or os.cpu_count() or 1
    per_rank = max(cpus // tensor_parallel_size, 1)
    groups = [(r * per_rank, min((r + 1) * per_rank, cpus) - 1) for r in range(tensor_parallel_size)]
    return "|".join(f"{a}-{b}" if b > a else str(a) for a, b in groups)


RAY_ENV_TO_COPY = "VLLM_RAY_EXTRA_ENV_VARS_TO_COPY"
# what workers' plugins read, and the CPU workers' memory bounds (engine_env.py)
QRHEAD_WORKER_ENV = ("QRHEAD_ENABLED", "QRHEAD_SKIP_VERSION_CHECK", *CPU_ENGINE_ENV)


def engine_env(tensor_parallel_size: int = 1, qrhead: bool = True):
    """The environment an engine's processes inherit, set only while it starts
    (:func:`~qrhead_vllm.integration.engine_env.scoped_env`).

    QRHead on (``QRHEAD_ENABLED=1``, hooks installed here) for hooked engines, and on CPU every
    core used by the worker(s) (vLLM's CPU default reserves one of two cores for the front end,
    halving prefill speed), with oneDNN's primitive cache and glibc's mmap threshold fixed
    (``cpu_engine_env``: the worker's memory stays flat under varied traffic).
    """
    from qrhead_vllm.plugin import register
    bind = os.environ.get(THREADS_BIND) or cpu_thread_binding(tensor_parallel_size)
    wanted = {THREADS_BIND: bind, **cpu_engine_env()}
    if qrhead:
        wanted[RAY_ENV_TO_COPY] = ray_env_to_copy()
    return scoped_env(wanted, register if qrhead else None)


def ray_env_to_copy() -> str:
    """``VLLM_RAY_EXTRA_ENV_VARS_TO_COPY`` with our switches added to what the caller set.

    With ``distributed_executor_backend="ray"`` (tensor parallelism across GPUs) the workers are
    Ray actors, and vLLM copies only its own variables (``VLLM_*``, ``HF_*``, ...) to them: without
    this the workers would start with the hook off and every score would fail with CaptureError.
    """
    names = [n for n in os.environ.get(RAY_ENV_TO_COPY, "").split(",") if n.strip()]
    return ",".join(dict.fromkeys([*names, *QRHEAD_WORKER_ENV]))


def engine_kwargs(model_path: str, dtype: str, *, qrhead: bool = True,
                  kv_cache_sequences: int = DEFAULT_KV_CACHE_SEQUENCES,
                  last_layer: int | None = None, **overrides: Any) -> dict[str, Any]:
    """Engine arguments with our defaults; anything the caller passes wins.

    On CPU the KV cache is sized from the model and the context (:mod:`..memory`), unless the
    caller set ``kv_cache_memory_bytes`` or ``gpu_memory_utilization`` explicitly.

    Args:
        last_layer: make the engine score-only: it builds, loads and runs layers
            ``0..last_layer`` only and refuses generation (:mod:`.layer_cut`).

    Raises:
        InsufficientMemoryError: the engine would not fit this machine (before it starts).
        EngineCompatibilityError: an engine shape the capture cannot score exactly.
    """
    kwargs: dict[str, Any] = {"model": model_path, "dtype": dtype}
    if qrhead:
        kwargs.update(ENGINE_DEFAULTS, worker_extension_cls=WORKER_EXTENSION)
    kwargs.update(overrides)
    if last_layer is not None:
        if not qrhead:
            raise EngineCompatibilityError("last_layer (a score-only engine) needs the QRHead "
                                           "hook: it is for retriever engines only")
        check_score_only_model(model_path, last_layer)
        kwargs["additional_config"] = {**(kwargs.get("additional_config") or {}),
                                       **additional_config(last_layer)}
    if qrhead:
        check_scoring_engine(kwargs)
    sized = "kv_cache_memory_bytes" in overrides or "gpu_memory_utilization" in overrides
    if on_cpu() and not sized:
        kwargs["kv_cache_memory_bytes"] = cpu_kv_cache_bytes(
            model_path, dtype, kwargs.get("max_model_len"), kv_cache_sequences, last_layer,
            kwargs.get("block_size") or CPU_BLOCK_SIZE)
    return kwargs


def check_scoring_engine(kwargs: dict[str, Any]) -> None:
    """Refuse, before anything starts, engine shapes the capture cannot score exactly (the
    worker checks again at start-up, for engines configured some other way).

    Raises:
        EngineCompatibilityError: pipeline parallelism or a quantised KV cache.
    """
    pp = kwargs.get("pipeline_parallel_size") or 1
    if pp > 1:
        raise EngineCompatibilityError(
            f"qrhead-vllm does not support pipeline_parallel_size={pp} for a scoring engine "
            "(a request's heads would live on several stages); use tensor_parallel_size")
    kv_dtype = kwargs.get("kv_cache_dtype") or "auto"
    if kv_dtype != "auto":
        raise EngineCompatibilityError(
            f"qrhead-vllm cannot score from a {kv_dtype} KV cache (its keys are quantised); "
            "use kv_cache_dtype=auto")


def check_score_only_model(model_path: str, last_layer: int) -> None:
    """The worker's score-only check (:func:`.layer_cut.check_cut`), before anything starts.

    Raises:
        EngineCompatibilityError: an unverified model class or a layer outside the model.
    """
    from transformers import AutoConfig
    config = AutoConfig.from_pretrained(model_path)
    text = getattr(config, "text_config", None) or config
    check_model(config.architectures, text.num_hidden_layers, last_layer)


def cpu_kv_cache_bytes(model_path: str, dtype: str, max_model_len: int | None,
                       kv_cache_sequences: int, last_layer: int | None = None,
                       block_size: int = CPU_BLOCK_SIZE) -> int:
    """The KV budget of a CPU engine (of its layers ``0..last_layer`` for a score-only one),
    after checking the whole engine fits its NUMA node."""
    from transformers import AutoConfig
    config = AutoConfig.from_pretrained(model_path)
    text = getattr(config, "text_config", None) or config
    facts = ModelFacts.from_hf_config(config, model_path)
    plan = plan_for_engine(model_path, facts, dtype, max_model_len or text.max_position_embeddings,
                           kv_cache_sequences, last_layer, block_size)
    logger.info("qrhead-vllm engine memory: %s", plan.describe())
    return plan.kv_cache_bytes


def node_of_binding(binding: str | None) -> int:
    """NUMA node of the first CPU in a ``VLLM_CPU_OMP_THREADS_BIND`` value (0 if unknown)."""
    try:
        cpu = int(str(binding).replace("|", ",").replace("-", ",").split(",")[0])
    except ValueError:
        return 0
    nodes = sorted(Path(f"/sys/devices/system/cpu/cpu{cpu}").glob("node[0-9]*"))
    return int(nodes[0].name[4:]) if nodes else 0


def node_available_bytes(node: int) -> int:
    """The available memory vLLM itself will check against (its NUMA and cgroup reading)."""
    from vllm.utils.cpu_resource_utils import get_memory_node_info
    return int(get_memory_node_info(node).available_memory)


def plan_for_engine(model_path: str, facts: ModelFacts, dtype: str, max_model_len: int,
                    kv_cache_sequences: int = DEFAULT_KV_CACHE_SEQUENCES,
                    last_layer: int | None = None,
                    block_size: int = CPU_BLOCK_SIZE) -> MemoryPlan:
    """:func:`plan_cpu_memory` for an engine about to start in this process's environment
    (a score-only one when ``last_layer`` is set)."""
    node = node_of_binding(os.environ.get(THREADS_BIND))
    layers = None if last_layer is None else last_layer + 1
    return plan_cpu_memory(facts, dtype, max_model_len, node_available_bytes(node),
                           weight_bytes(model_path, dtype, last_layer), kv_cache_sequences,
                           node, block_size, layers)
