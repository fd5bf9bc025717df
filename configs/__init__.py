"""Shipped configuration files, installed as package data of ``qrhead_vllm.configs``.

``heads/``: typed head configs (``qrhead_vllm.heads.HeadConfig``) with their heat maps and
stability reports; ``serve/``: Ray Serve config files for ``qrhead_vllm.serve``. Read them with
:func:`path`, which works the same from a checkout and from an installed wheel.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def path(*parts: str) -> Path:
    """A shipped file or folder, e.g. ``path("serve", "cpu.yaml")``."""
    return Path(str(resources.files(__name__).joinpath(*parts)))
