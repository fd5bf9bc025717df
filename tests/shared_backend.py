"""A session-scoped backend handed to code that closes what it is given (``qrhead rerank``
closes its ranker when done): the engine stays up for the tests that come after."""

from __future__ import annotations


class SharedBackend:
    """The session backend behind a no-op close()."""

    def __init__(self, backend):
        self._backend = backend

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def close(self):
        pass
