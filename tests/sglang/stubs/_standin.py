"""Shared machinery of the import-time stand-ins (test environment only, see README.md here).

A stand-in module answers attribute look-ups with :class:`StandIn` objects so that SGLang's
module-level ``from sgl_kernel import x`` and ``torchvision.transforms.InterpolationMode.BICUBIC``
succeed on CPU. Any *call* of a stand-in records itself (in ``$QRHEAD_STANDIN_LOG``, one JSON
line per call, so calls in SGLang's scheduler subprocess are seen too) and raises: the test
conftest fails the session if the log is not empty at the end.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import os
import sys
import traceback

LOG_ENV = "QRHEAD_STANDIN_LOG"


class StandInCalled(RuntimeError):
    """A CPU stand-in for a CUDA-only package was called: the test relied on a fake kernel."""


def record(name: str) -> None:
    path = os.environ.get(LOG_ENV)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"name": name, "pid": os.getpid(),
                                "stack": traceback.format_stack(limit=8)}) + "\n")


class StandIn:
    """A name from a missing package: may be looked up and passed around, never called."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str) -> "StandIn":
        if attr.startswith("__"):
            raise AttributeError(attr)
        return StandIn(f"{self._name}.{attr}")

    def __call__(self, *args, **kwargs):
        record(self._name)
        raise StandInCalled(f"{self._name} is a CPU test stand-in (tests/sglang/stubs) and "
                            "must never be called")

    def __repr__(self) -> str:
        return f"<stand-in {self._name}>"


def module_getattr(module_name: str):
    """A module-level ``__getattr__`` handing out stand-ins for public names."""
    def __getattr__(attr: str) -> StandIn:
        if attr.startswith("__"):
            raise AttributeError(f"module {module_name!r} has no attribute {attr!r}")
        return StandIn(f"{module_name}.{attr}")
    return __getattr__


class _StandInLoader(importlib.abc.Loader):
    def create_module(self, spec):
        return None                                   # a plain module object

    def exec_module(self, module) -> None:
        module.__getattr__ = module_getattr(module.__name__)
        module.__path__ = []                          # a package: its submodules resolve too


class StandInFinder(importlib.abc.MetaPathFinder):
    """Resolves every submodule of the stand-in packages (``torchvision.transforms.v2`` ...)
    to a stand-in module, so no list of SGLang's or transformers' submodule imports is kept."""

    def __init__(self, roots: tuple[str, ...]):
        self.roots = roots

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.roots and "." in fullname:
            return importlib.machinery.ModuleSpec(fullname, _StandInLoader(), is_package=True)
        return None


def install(module_name: str, module_globals: dict) -> None:
    """Make ``module_name`` (a stand-in package's ``__init__``) resolve names and submodules."""
    module_globals["__getattr__"] = module_getattr(module_name)
    if not any(isinstance(f, StandInFinder) and module_name in f.roots for f in sys.meta_path):
        sys.meta_path.insert(0, StandInFinder((module_name,)))


def recorded_calls() -> list[dict]:
    """Every stand-in call recorded so far in ``$QRHEAD_STANDIN_LOG``, by any process."""
    path = os.environ.get(LOG_ENV)
    if not path or not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
