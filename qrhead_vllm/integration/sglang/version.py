"""The supported SGLang range, read from this package's own metadata (one source of truth: the
``sglang`` extra in pyproject.toml), and the patch module that serves an installed version.

Mirrors ``integration/vllm/version.py``: patch modules are named per SGLang minor
(``qrhead_vllm.patches.sglang_0_5``); signature checks inside them still refuse a release in
the range whose internals moved.
"""

from __future__ import annotations

import logging
import pkgutil
import re
from importlib import metadata

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from qrhead_vllm import envs
from qrhead_vllm.errors import EngineCompatibilityError

logger = logging.getLogger(__name__)
_PATCH_MODULE = re.compile(r"sglang_(\d+)_(\d+)$")


def supported_range() -> SpecifierSet:
    """The specifier on sglang in our extras, e.g. ``>=0.5.23,<0.6``."""
    for line in metadata.requires("qrhead-vllm") or []:
        req = Requirement(line)
        if req.name == "sglang":
            return req.specifier
    raise EngineCompatibilityError("qrhead-vllm metadata declares no sglang requirement")


def patch_modules() -> dict[tuple[int, int], str]:
    """(major, minor) -> name of every ``qrhead_vllm.patches.sglang_<major>_<minor>`` shipped."""
    import qrhead_vllm.patches as patches
    out = {}
    for info in pkgutil.iter_modules(patches.__path__):
        m = _PATCH_MODULE.match(info.name)
        if m:
            out[(int(m.group(1)), int(m.group(2)))] = info.name
    return out


def check_sglang_version(version: str) -> str:
    """Return the patch module name for ``version`` or raise at start-up.

    Raises:
        EngineCompatibilityError: the version is outside the supported range, unless
            QRHEAD_SKIP_VERSION_CHECK=1: then the patch module of the nearest shipped minor is
            loaded (with a warning), and its signature checks still refuse moved internals.
    """
    v = Version(version)
    spec = supported_range()
    modules = patch_modules()
    if Version(f"{v.major}.{v.minor}.{v.micro}") in spec and (v.major, v.minor) in modules:
        return modules[(v.major, v.minor)]
    if not envs.skip_version_check():
        raise EngineCompatibilityError(
            f"qrhead-vllm supports SGLang {spec}, but SGLang {version} is installed. Install a "
            "supported version, or set QRHEAD_SKIP_VERSION_CHECK=1 to try the nearest "
            f"supported hooks ({', '.join(sorted(modules.values()))}) anyway.")
    nearest = min(modules, key=lambda mm: (abs((mm[0] - v.major) * 1000 + mm[1] - v.minor), mm))
    logger.warning("qrhead-vllm: SGLang %s is unsupported; QRHEAD_SKIP_VERSION_CHECK=1 loads "
                   "the hooks of SGLang %d.%d", version, *nearest)
    return modules[nearest]
