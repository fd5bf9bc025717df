"""What every engine's plugin entry point does (``qrhead_vllm.plugin``, ``.plugin_sglang``).

An engine calls its entry point once in every process it starts. :meth:`EnginePlugin.register`
does nothing unless ``QRHEAD_ENABLED=1`` (so installing the package never changes an unrelated
engine), imports the engine only then, checks its version (:mod:`.versions`) and applies the
patch module of that version, once per process.
"""

from __future__ import annotations

import importlib
import logging
from typing import Callable

from qrhead_vllm import envs
from qrhead_vllm.errors import EngineCompatibilityError
from qrhead_vllm.integration.versions import EngineVersions

logger = logging.getLogger(__name__)


class EnginePlugin:
    """One engine's hook installer. ``on_refusal`` runs before a refusal is raised (for an
    engine whose plugin loader would swallow the exception)."""

    def __init__(self, versions: EngineVersions,
                 on_refusal: Callable[[EngineCompatibilityError], None] | None = None):
        self.versions, self.on_refusal = versions, on_refusal
        self.registered = False

    def register(self) -> None:
        """Check the engine's version and install the hooks of that version, once.

        Raises:
            EngineCompatibilityError: at start-up, on an unsupported version or engine
                internals that changed shape (never later, mid-request).
        """
        if self.registered or not envs.plugin_enabled():
            return
        version = importlib.import_module(self.versions.prefix).__version__
        try:
            module = self.versions.check(version)
            importlib.import_module(f"qrhead_vllm.patches.{module}").apply()
        except EngineCompatibilityError as e:
            if self.on_refusal is not None:
                self.on_refusal(e)
            raise
        self.registered = True
        logger.info("qrhead-vllm hooks installed for %s %s", self.versions.name, version)
