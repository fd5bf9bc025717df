"""Sizing a CPU engine by what it needs, not by a fraction of whatever box it lands on.

Engine-neutral: the vLLM and the SGLang engine arguments (``integration/<engine>/engine_args``)
both size their KV cache with :func:`plan_cpu_memory`, from the memory their engine will see.

On CPU, vLLM reads ``gpu_memory_utilization`` as a fraction of the NUMA node's *total* memory
and gives the KV cache what is left of it after the weights: a fraction that works on one box
leaves a negative KV budget on a box whose node is smaller (issue 9: 0.12 × 11.96 GiB < 1.7 GiB
of weights and activations). vLLM 0.32's supported alternative is the ``kv_cache_memory_bytes``
engine argument (``VLLM_CPU_KVCACHE_SPACE`` is its legacy, whole-GiB form): an explicit KV
budget. We derive it from the model and the context, and check the whole need against the
memory vLLM reports for the node before the engine starts, so a box that cannot fit the engine
fails with the numbers and the knob to turn instead of vLLM's negative-budget error.

    need = weights + KV cache (kv_cache_sequences × max_model_len tokens, whole blocks) + headroom

A score-only engine (``last_layer``, see :mod:`.vllm.layer_cut`) holds the weights and the KV cache
of layers ``0..last_layer`` only, and is sized for exactly that.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from qrhead_vllm.errors import InsufficientMemoryError
from qrhead_vllm.heads import ModelFacts

GiB = 2**30
HEADROOM_BYTES = GiB            # activations of one prefill step, allocator slack, the runtime
# Full-length sequences the KV cache holds at once: one scoring prompt of max_model_len and its
# null twin (which shares all but the query span). Servers that batch raise it.
DEFAULT_KV_CACHE_SEQUENCES = 2
DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2}


def dtype_bytes(dtype: str) -> int:
    try:
        return DTYPE_BYTES[str(dtype).removeprefix("torch.")]
    except KeyError:
        raise InsufficientMemoryError(f"cannot size an engine of dtype {dtype!r}; use one of "
                                      f"{sorted(DTYPE_BYTES)}") from None


def kv_bytes_per_token(facts: ModelFacts, dtype: str, num_layers: int | None = None) -> int:
    """Keys and values of every layer (or of the first ``num_layers``) for one token (full
    attention assumed for every layer, which over-provisions sliding-window models a little:
    safe)."""
    layers = facts.num_layers if num_layers is None else num_layers
    return 2 * layers * facts.num_kv_heads * facts.head_dim * dtype_bytes(dtype)


_LAYER = re.compile(r"\.layers\.(\d+)\.")


def _tensor_elements(file: Path) -> dict[str, int]:
    """Element count of every tensor in a safetensors file, from its JSON header only."""
    with file.open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    return {name: math.prod(t["shape"]) for name, t in header.items() if name != "__metadata__"}


def weight_bytes(model_path: str, dtype: str, last_layer: int | None = None) -> int | None:
    """Weights in ``dtype`` (of layers ``0..last_layer`` and the rest of the model, when
    given), counted from the safetensors headers; None when the model is not a local
    directory (a hub id: nothing to measure)."""
    path = Path(model_path)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    if not files:
        return None
    total = 0
    for file in files:
        for name, count in _tensor_elements(file).items():
            match = _LAYER.search(name)
            if last_layer is None or match is None or int(match.group(1)) <= last_layer:
                total += count
    return total * dtype_bytes(dtype)


@dataclass(frozen=True)
class MemoryPlan:
    """What one CPU engine needs, against what its NUMA node has available."""

    kv_cache_bytes: int
    weights_bytes: int
    headroom_bytes: int
    available_bytes: int
    node: int
    max_model_len: int
    kv_cache_sequences: int
    num_layers: int | None = None        # layers held (a score-only engine's); None: all

    @property
    def need_bytes(self) -> int:
        return self.kv_cache_bytes + self.weights_bytes + self.headroom_bytes

    def describe(self) -> str:
        g = lambda b: f"{b / GiB:.2f} GiB"  # noqa: E731
        layers = f" of layers 0..{self.num_layers - 1}" if self.num_layers else ""
        return (f"weights{layers} {g(self.weights_bytes)} + KV cache {g(self.kv_cache_bytes)} "
                f"({self.kv_cache_sequences} × {self.max_model_len} tokens) + headroom "
                f"{g(self.headroom_bytes)} = {g(self.need_bytes)}; NUMA node {self.node} has "
                f"{g(self.available_bytes)} available")


def plan_cpu_memory(facts: ModelFacts, dtype: str, max_model_len: int, available_bytes: int,
                    weights: int | None = None, kv_cache_sequences: int =
                    DEFAULT_KV_CACHE_SEQUENCES, node: int = 0,
                    block_size: int = 1,
                    num_layers: int | None = None) -> MemoryPlan:
    """The KV budget for ``kv_cache_sequences`` full-length sequences of ``num_layers`` layers
    (default: all), in whole blocks of ``block_size`` tokens, checked against the node.

    Raises:
        InsufficientMemoryError: the engine does not fit; the message names every number and
            the knobs that shrink it.
    """
    if kv_cache_sequences < 1 or max_model_len < 1:
        raise InsufficientMemoryError("kv_cache_sequences and max_model_len must be >= 1")
    tokens = math.ceil(max_model_len / block_size) * block_size * kv_cache_sequences
    plan = MemoryPlan(tokens * kv_bytes_per_token(facts, dtype, num_layers), weights or 0,
                      HEADROOM_BYTES, available_bytes, node, max_model_len, kv_cache_sequences,
                      num_layers)
    if plan.need_bytes > available_bytes:
        raise InsufficientMemoryError(
            f"{facts.model_id} ({dtype}) does not fit this machine: {plan.describe()}. Lower "
            "max_model_len or kv_cache_sequences, use dtype=bfloat16, free memory on the node, "
            "or set kv_cache_memory_bytes yourself.")
    return plan
