"""The supported SGLang range (the ``sglang`` extra in pyproject.toml) and the patch module
that serves an installed SGLang (see :mod:`qrhead_vllm.integration.versions`)."""

from __future__ import annotations

from packaging.specifiers import SpecifierSet

from qrhead_vllm.integration.versions import EngineVersions

SGLANG = EngineVersions("SGLang", ("sglang",), "sglang")


def supported_range() -> SpecifierSet:
    return SGLANG.supported_range()


def patch_modules() -> dict[tuple[int, int], str]:
    return SGLANG.patch_modules()


def check_sglang_version(version: str) -> str:
    """The ``qrhead_vllm.patches`` module for ``version``; raises EngineCompatibilityError
    outside the supported range unless QRHEAD_SKIP_VERSION_CHECK=1 (nearest minor)."""
    return SGLANG.check(version)
