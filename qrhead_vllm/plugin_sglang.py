"""The ``sglang.srt.plugins`` entry point (the SGLang sibling of ``plugin.py``).

SGLang calls :func:`register` in every process it starts (the engine's own process, the
scheduler, the detokenizer, the data-parallel controller). Same rule as for vLLM: it does
nothing unless ``QRHEAD_ENABLED=1`` (``QRHeadRanker(backend="sglang")`` and the Serve app set
it for the engines they start), so installing the package never changes an unrelated SGLang.

SGLang's plugin loader logs and swallows an exception raised by a plugin. A refusal (an
unsupported version, a wrapped method whose signature changed) therefore also makes the
schedulers of this process fail at start-up with the same message, instead of an engine that
runs without hooks; our own Python API calls :func:`register` before starting an engine, so
its callers get the :class:`EngineCompatibilityError` itself.
"""

from __future__ import annotations

import importlib
import logging

from qrhead_vllm import envs
from qrhead_vllm.errors import EngineCompatibilityError

logger = logging.getLogger(__name__)
_registered = False


def register() -> None:
    """Check the SGLang version and install the hooks of that version, once per process.

    Raises:
        EngineCompatibilityError: an unsupported SGLang version or engine internals that changed
            shape (at start-up, never mid-request).
    """
    global _registered
    if _registered or not envs.plugin_enabled():
        return
    import sglang

    from qrhead_vllm.integration.sglang.version import check_sglang_version

    try:
        module = check_sglang_version(sglang.__version__)
        importlib.import_module(f"qrhead_vllm.patches.{module}").apply()
    except EngineCompatibilityError as e:
        logger.error("qrhead-vllm refuses this SGLang engine: %s", e)
        _refuse_scheduler_start(e)
        raise
    _registered = True
    logger.info("qrhead-vllm hooks installed for SGLang %s", sglang.__version__)


def _refuse_scheduler_start(error: Exception) -> None:
    """Make this process's schedulers fail at start with ``error`` (see the module docstring)."""
    from sglang.srt.managers.scheduler import Scheduler

    from qrhead_vllm.patches import wrap_method

    def make(original):
        def __init__(self, *args, **kwargs):
            raise EngineCompatibilityError(str(error))
        return __init__
    wrap_method(Scheduler, "__init__", ("self",), make)
