"""Every QRHEAD_* environment variable, read lazily (vLLM's envs.py pattern). Nothing else in
the package reads ``os.environ`` for a QRHEAD_* name.

Precedence, one rule everywhere: an explicit argument (Python API, config file, CLI flag)
wins over the environment, and the environment wins over the built-in default.

==============================  =================================================================
``QRHEAD_ENABLED``              ``1``: the engine plugins install their hooks (off otherwise)
``QRHEAD_CACHE``                dequantised bundled models, detection checkpoints
                                (default ``~/.cache/qrhead-vllm``)
``QRHEAD_CONFIG_DIR``           a folder with ``heads/`` (and ``serve/``) used instead of the
                                shipped configs
``QRHEAD_DATA_DIR``             the shared evaluation data for benches (default ``../shared/data``
                                beside a checkout)
``QRHEAD_API_KEY``              the key clients of the Serve app must send
                                (``Authorization: Bearer <key>``); unset: no key needed
``QRHEAD_SKIP_VERSION_CHECK``   ``1``: load the nearest patch module on an unsupported engine
                                version (at your own risk)
``QRHEAD_LOG_LEVEL``            the package's log level in processes a command starts (Serve
                                replicas); ``--log-level`` sets it (default ``info``)
==============================  =================================================================
"""

from __future__ import annotations

import os
from pathlib import Path

ENABLED = "QRHEAD_ENABLED"
LOG_LEVEL = "QRHEAD_LOG_LEVEL"
_TRUE = ("1", "true", "yes")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in _TRUE


def cache_dir() -> Path:
    """Where dequantised models and other derived artefacts are kept (QRHEAD_CACHE)."""
    default = Path.home() / ".cache" / "qrhead-vllm"
    return Path(os.environ.get("QRHEAD_CACHE", default)).expanduser()


def plugin_enabled() -> bool:
    """QRHEAD_ENABLED=1 turns the engine plugins on; they are a no-op otherwise."""
    return _flag(ENABLED)


def skip_version_check() -> bool:
    """QRHEAD_SKIP_VERSION_CHECK=1: load the nearest patch module on an unsupported version."""
    return _flag("QRHEAD_SKIP_VERSION_CHECK")


def api_key() -> str | None:
    """QRHEAD_API_KEY: the Serve app's API key (read in the ingress replica), or None."""
    value = os.environ.get("QRHEAD_API_KEY", "").strip()
    return value or None


def log_level() -> str | None:
    """QRHEAD_LOG_LEVEL (upper case), or None: the level of our loggers in a Serve replica.

    Raises:
        ValueError: a value that is not a log level (the message names the choices).
    """
    value = os.environ.get(LOG_LEVEL, "").strip().upper()
    if value and value not in _LOG_LEVELS:
        raise ValueError(f"{LOG_LEVEL}={value.lower()!r} is not a log level: use one of "
                         f"{', '.join(v.lower() for v in _LOG_LEVELS)}")
    return value or None


def config_dir() -> Path | None:
    """QRHEAD_CONFIG_DIR, or None for the shipped configs."""
    value = os.environ.get("QRHEAD_CONFIG_DIR")
    return Path(value).expanduser() if value else None


def data_dir(default: Path) -> Path:
    """QRHEAD_DATA_DIR, else ``default`` (the shared data beside a checkout)."""
    value = os.environ.get("QRHEAD_DATA_DIR")
    return Path(value).expanduser() if value else default
