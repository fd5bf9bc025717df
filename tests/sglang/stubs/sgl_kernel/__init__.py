"""CPU test stand-in for `sgl_kernel` (see tests/sglang/stubs/README.md): look-ups succeed, calls fail."""
from _standin import install

__version__ = "0.0.0+standin"
install(__name__, globals())
