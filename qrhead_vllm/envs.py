"""QRHEAD_* environment variables, read lazily (vLLM's envs.py pattern).

Precedence, one rule everywhere: an explicit argument (Python API, config file, CLI flag)
wins over the environment, and the environment wins over the built-in default.
"""

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where dequantised models and other derived artefacts are kept (QRHEAD_CACHE)."""
    default = Path.home() / ".cache" / "qrhead-vllm"
    return Path(os.environ.get("QRHEAD_CACHE", default)).expanduser()


def plugin_enabled() -> bool:
    """QRHEAD_ENABLED=1 turns the vLLM plugin on; it is off (a no-op) otherwise."""
    return os.environ.get("QRHEAD_ENABLED", "0").lower() in ("1", "true", "yes")


def skip_version_check() -> bool:
    """QRHEAD_SKIP_VERSION_CHECK=1: load the plugin on an unsupported vLLM (at your own risk)."""
    return os.environ.get("QRHEAD_SKIP_VERSION_CHECK", "0").lower() in ("1", "true", "yes")
