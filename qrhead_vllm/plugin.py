"""The ``vllm.general_plugins`` entry point.

vLLM calls :func:`register` once in every process it starts (API server, engine core,
workers). The one rule that turns QRHead on: the environment variable ``QRHEAD_ENABLED=1``
(QRHeadRanker(backend="vllm") and the Serve app set it for the engines they start). Otherwise
``register`` does nothing, so installing the package never changes an unrelated vLLM.
"""

from __future__ import annotations

from qrhead_vllm.integration.plugin import EnginePlugin
from qrhead_vllm.integration.vllm import VERSIONS

PLUGIN = EnginePlugin(VERSIONS)


def register() -> None:
    """Check the vLLM version and install the hooks of that version, once per process
    (:meth:`EnginePlugin.register`)."""
    PLUGIN.register()
