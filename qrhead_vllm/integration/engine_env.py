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


def on_cpu() -> bool:
    """Whether engines started here run on CPU (no CUDA device)."""
    import torch
    return not torch.cuda.is_available()


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
