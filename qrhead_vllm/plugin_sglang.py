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

import logging

from qrhead_vllm.errors import EngineCompatibilityError
from qrhead_vllm.integration.plugin import EnginePlugin
from qrhead_vllm.integration.sglang import VERSIONS

logger = logging.getLogger(__name__)


def _refuse_scheduler_start(error: EngineCompatibilityError) -> None:
    """Make this process's schedulers fail at start with ``error`` (see the module docstring)."""
    from sglang.srt.managers.scheduler import Scheduler

    from qrhead_vllm.patches import wrap_method
    logger.error("qrhead-vllm refuses this SGLang engine: %s", error)

    def make(original):
        def __init__(self, *args, **kwargs):
            raise EngineCompatibilityError(str(error))
        return __init__
    wrap_method(Scheduler, "__init__", ("self",), make)


PLUGIN = EnginePlugin(VERSIONS, on_refusal=_refuse_scheduler_start)


def register() -> None:
    """Check the SGLang version and install the hooks of that version, once per process
    (:meth:`EnginePlugin.register`).

    Raises:
        EngineCompatibilityError: an unsupported SGLang version or engine internals that changed
            shape (at start-up, never mid-request).
    """
    PLUGIN.register()
