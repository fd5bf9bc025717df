"""Exceptions raised by qrhead-vllm. Every user-facing failure is one of these."""


class QRHeadError(Exception):
    """Base class of every error qrhead-vllm raises on purpose."""


class InvalidInputError(QRHeadError, ValueError):
    """A query or document list that cannot be scored (empty, wrong type, ...)."""


class ContextOverflowError(InvalidInputError):
    """The scoring prompt does not fit the model's context window."""


class HeadConfigError(QRHeadError, ValueError):
    """A head config that is malformed or does not fit the model it is used with."""


class EngineCompatibilityError(QRHeadError, RuntimeError):
    """The installed engine (vLLM version, attention backend, KV layout) is unsupported."""


class CaptureError(QRHeadError, RuntimeError):
    """A scoring request whose capture failed inside the engine: it gets this error, never a
    wrong score; other requests are unaffected."""


class InsufficientMemoryError(QRHeadError, RuntimeError):
    """An engine does not fit the machine's memory (raised before it starts)."""
