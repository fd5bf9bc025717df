"""``dtype="auto"``, the default of every entry point: one rule, resolved here.

* on a GPU: ``"auto"`` is passed on, so the engine makes its own choice (vLLM and transformers:
  the model config's dtype);
* on a CPU with native bf16 (``amx_bf16`` or ``avx512_bf16`` in ``/proc/cpuinfo``): ``bfloat16``.
  There bf16 is about 3x faster than fp32 (issue 19: the port ranks a 20-passage DL19 query in
  0.67 s vs 2.2 s on an AMX Xeon) and vLLM picks its AMX attention kernel;
* on any other CPU (AVX2-only, AVX-512 without bf16, non-x86): ``float32``. bf16 is correct
  there but emulated, and slower than fp32.

An explicit dtype (``float32``, ``bfloat16``, ``float16``) is always kept as given. Scores in
bf16 differ from fp32 in the last digits (bench/quality/dtype.py measures the ranking effect:
docs/results/quality.md); code that needs scores equal across engines pins ``dtype="float32"``.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

logger = logging.getLogger(__name__)

AUTO = "auto"
# What a --dtype flag accepts (qrhead rerank, qrhead serve): auto or a dtype every engine takes.
CHOICES = (AUTO, "float32", "bfloat16", "float16")
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
CPUINFO = Path("/proc/cpuinfo")


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The first CPU's feature flags (empty where /proc/cpuinfo is absent or has none)."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def native_bf16(flags: frozenset[str] | None = None) -> bool:
    """Whether this CPU computes bf16 natively (AMX or AVX-512 bf16)."""
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in NATIVE_BF16_FLAGS)


def on_gpu(device: str | None = None) -> bool:
    """A CUDA device given, or (no device given) one visible to torch."""
    if device is not None:
        return str(device).startswith("cuda")
    import torch
    return torch.cuda.is_available()


def resolve_dtype(dtype: str | None, device: str | None = None, *, log: bool = True) -> str:
    """The dtype an engine is started with: ``"auto"`` (or None) resolved by the rule above."""
    if dtype not in (None, AUTO):
        return str(dtype).removeprefix("torch.")
    if on_gpu(device):
        resolved, why = AUTO, "GPU: the engine's own choice"
    elif native_bf16():
        resolved, why = "bfloat16", "CPU with native bf16 (" + ", ".join(
            f for f in NATIVE_BF16_FLAGS if f in cpu_flags()) + ")"
    else:
        resolved, why = "float32", "CPU without native bf16"
    if log:
        logger.info("dtype=auto -> %s (%s)", resolved, why)
    return resolved
