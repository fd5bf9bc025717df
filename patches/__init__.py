"""Engine-version-specific hooks, one module per supported vLLM minor (``vllm_0_32``...).

They live inside the package (not a top-level ``patches/`` folder) so that an installed wheel
can import them: vLLM loads the plugin entry point in every worker process.

Rules: every patch *wraps* the original and calls it; none pastes modified vLLM code. Each
records what it patched (``PATCHED``), refuses to patch twice, and checks the target's
signature at apply time so a vLLM change fails at start-up, not mid-request.
"""

from __future__ import annotations

import functools
import inspect
import logging

from qrhead_vllm.errors import EngineCompatibilityError

logger = logging.getLogger(__name__)
PATCHED: dict[str, object] = {}  # "module.Class.method" -> original


def wrap_method(cls: type, name: str, expected_params: tuple[str, ...], make_wrapper) -> None:
    """Replace ``cls.name`` by ``make_wrapper(original)`` once, after checking its signature.

    Raises:
        EngineCompatibilityError: the method is missing or its parameters changed.
    """
    _wrap(cls, f"{cls.__module__}.{cls.__qualname__}.{name}", name, expected_params,
          make_wrapper)


def wrap_function(module, name: str, expected_params: tuple[str, ...], make_wrapper) -> None:
    """:func:`wrap_method` for a module-level function. Only callers that look the function up
    on the module at call time (``from module import f`` inside a function body) see the
    wrapper; a name bound at import time elsewhere keeps the original.

    Raises:
        EngineCompatibilityError: the function is missing or its parameters changed.
    """
    _wrap(module, f"{module.__name__}.{name}", name, expected_params, make_wrapper)


def _wrap(owner, target: str, name: str, expected_params: tuple[str, ...], make_wrapper) -> None:
    if target in PATCHED:
        return
    original = owner.__dict__.get(name)
    if original is None:
        raise EngineCompatibilityError(f"cannot patch {target}: it does not exist")
    params = tuple(inspect.signature(original).parameters)[: len(expected_params)]
    if params != expected_params:
        raise EngineCompatibilityError(
            f"cannot patch {target}: expected parameters {expected_params}, found {params}")
    wrapper = functools.wraps(original)(make_wrapper(original))
    setattr(owner, name, wrapper)
    PATCHED[target] = original
    logger.info("qrhead-vllm wrapped %s", target)
