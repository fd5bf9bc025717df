"""The environment an engine's processes inherit, shared by every engine's ``engine_args``.

Engines read some settings from the environment of the processes they spawn (``QRHEAD_ENABLED``
for our plugin, their own CPU switches). :func:`scoped_env` sets them only while an engine
starts and restores them after, so the caller's process is not left with the plugin switched on
for engines it starts later; it also installs the hooks in the caller's own process (an
in-process engine core uses them, and a refusal is raised here, to the caller).
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator

from qrhead_vllm import envs

# A CPU worker under varied traffic grew for hours (bf16 SmolLM2: +12 % in 150 requests of new
# lengths, still climbing), from two sources, each measured alone and together in
# docs/results/worker_memory.md:
# * oneDNN keeps up to 1,024 matmul primitives per process, one per shape, and vLLM's CPU
#   linear layers meet a new shape with every new token count in a step;
# * glibc raises its mmap threshold to the size of each large buffer freed, so later
#   activations of ever new sizes come from the heap, which fragments and never shrinks.
# Both bounded, the worker stays flat (1,524 MB from request 50 to 150). The caller's values win.
ONEDNN_CACHE = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
MMAP_THRESHOLD = "MALLOC_MMAP_THRESHOLD_"
CPU_ENGINE_ENV = {ONEDNN_CACHE: "64", MMAP_THRESHOLD: "65536"}


def on_cpu() -> bool:
    """Whether engines started here run on CPU (no CUDA device)."""
    import torch
    return not torch.cuda.is_available()


def cpu_engine_env() -> dict[str, str]:
    """The CPU engine processes' settings the caller has not set (nothing on GPU)."""
    if not on_cpu():
        return {}
    return {k: v for k, v in CPU_ENGINE_ENV.items() if k not in os.environ}


@contextlib.contextmanager
def scoped_env(wanted: dict[str, str], register: Callable[[], None] | None) -> Iterator[None]:
    """Set ``wanted`` (plus ``QRHEAD_ENABLED=1`` when ``register``, the engine plugin's entry
    point, is given, which is then called) while the block runs; restore them after.

    Raises:
        EngineCompatibilityError: from ``register``, on an engine the hooks refuse.
    """
    wanted = {**wanted, **({envs.ENABLED: "1"} if register else {})}
    saved = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    try:
        if register is not None:
            register()
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
