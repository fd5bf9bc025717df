"""Every package of the source tree is in the wheel's explicit package list (pyproject.toml).

The list is explicit because ``serve/``, ``patches/`` and ``configs/`` install under our
namespace through ``package-dir``; a new sub-package left out of it works in the checkout and
is missing from the wheel (the slow test_packaging would catch it, minutes later).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _source_packages() -> set[str]:
    roots = {"qrhead_vllm": REPO / "qrhead_vllm"}
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    for name, folder in pyproject["tool"]["setuptools"]["package-dir"].items():
        roots[name] = REPO / folder
    found = set()
    for name, root in roots.items():
        for init in root.rglob("__init__.py"):
            rel = init.parent.relative_to(root).parts
            found.add(".".join((name, *rel)))
    return found


def test_every_source_package_is_listed_for_the_wheel():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())
                 ["tool"]["setuptools"]["packages"])
    assert not _source_packages() - listed, "add these to [tool.setuptools] packages"
    assert not listed - _source_packages(), "listed packages with no source folder"


def test_engine_names_live_in_the_registry_only():
    """Choices, Literals and dispatch derive from qrhead_vllm/engines.py: no other module of the
    package compares against an engine name or lists them (docstrings and comments may name
    them; version checks name their distributions)."""
    import re
    from qrhead_vllm.engines import ENGINE_NAMES
    allowed = {"qrhead_vllm/engines.py", "qrhead_vllm/integration/vllm/version.py",
               "qrhead_vllm/integration/sglang/version.py"}
    names = "|".join(ENGINE_NAMES)
    choice = re.compile(rf'''(==|!=|\bin\b|choices=|Literal\[)\s*\(?\s*["']({names})["']''')
    found = []
    for path in list((REPO / "qrhead_vllm").rglob("*.py")) + list((REPO / "serve").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel not in allowed and choice.search(path.read_text()):
            found.append(rel)
    assert not found, f"derive these engine choices from qrhead_vllm.engines: {found}"
