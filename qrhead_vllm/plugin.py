"""The ``vllm.general_plugins`` entry point.

vLLM calls :func:`register` once in every process it starts (API server, engine core,
workers). The one rule that turns QRHead on: the environment variable ``QRHEAD_ENABLED=1``
(QRHeadRanker(backend="vllm") and the Serve app set it for the engines they start). Otherwise
``register`` does nothing, so installing the package never changes an unrelated vLLM.
"""

from __future__ import annotations

import importlib
import logging

from qrhead_vllm import envs

logger = logging.getLogger(__name__)
_registered = False


def register() -> None:
    """Check the vLLM version and install the hooks of that version, once per process.

    Raises:
        EngineCompatibilityError: at start-up, on an unsupported vLLM version or engine
            internals that changed shape (never later, mid-request).
    """
    global _registered
    if _registered or not envs.plugin_enabled():
        return
    import vllm

    from qrhead_vllm.integration.vllm.version import check_vllm_version

    module = check_vllm_version(vllm.__version__)
    importlib.import_module(f"qrhead_vllm.patches.{module}").apply()
    _registered = True
    logger.info("qrhead-vllm hooks installed for vLLM %s", vllm.__version__)
