"""Who may call the app: API keys, the way vLLM's server checks them.

* Keys come from the environment (``QRHEAD_API_KEY``, one key) and from a key file
  (``http.api_key_file``: one key per line, ``#`` comments), never from a Serve YAML: the YAML
  holds the file's path only. No key configured: the app is open (as vLLM without --api-key).
* A client sends ``Authorization: Bearer <key>`` (the openai and cohere SDKs send their
  ``api_key`` exactly so). The key is hashed and compared with ``hmac.compare_digest`` against
  every configured key, so neither the time taken nor an early exit says how much matched.
* Every route needs a key except ``/health`` (load balancers and Serve's own probes call it
  without one) and, when ``http.metrics_needs_key`` is false, ``/metrics``.
* The check reads the headers only: :class:`APIKeyAuth` is a pure ASGI middleware placed outside
  the body-size limit, so an unauthenticated request is refused before any body is read.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from pathlib import Path
from typing import Iterable

from qrhead_vllm import envs
from qrhead_vllm.serve.errors import APIError

logger = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health"})


def load_api_keys(key_file: str | None) -> list[str]:
    """The configured keys: ``QRHEAD_API_KEY`` plus each line of ``key_file``."""
    keys = [k for k in (envs.api_key(),) if k]
    if key_file:
        path = Path(key_file).expanduser()
        try:
            lines = path.read_text().splitlines()
        except OSError as e:
            raise ValueError(f"http.api_key_file {path}: cannot read it ({e}); give a readable "
                             "file with one API key per line") from None
        keys += [line.strip() for line in lines if line.strip() and
                 not line.lstrip().startswith("#")]
        if not keys:
            raise ValueError(f"http.api_key_file {path} holds no key: one key per line")
    return keys


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def unauthorized() -> APIError:
    return APIError(401, "missing or wrong API key: send the header 'Authorization: Bearer "
                         "<key>' (the openai and cohere clients do so with api_key=<key>)",
                    type="authentication_error")


class APIKeyAuth:
    """ASGI middleware: 401 in the OpenAI error shape for a request without a valid key."""

    def __init__(self, app, keys: Iterable[str], open_paths: Iterable[str] = OPEN_PATHS):
        self.app = app
        self.digests = [_digest(k) for k in keys]
        self.open_paths = frozenset(open_paths)

    def authorized(self, headers: list[tuple[bytes, bytes]]) -> bool:
        value = dict(headers).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        given, match = _digest(token.strip()), False
        for digest in self.digests:        # every key, no early exit
            match |= hmac.compare_digest(given, digest)
        return match

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket") or not self.digests \
                or scope.get("method") == "OPTIONS":
            return await self.app(scope, receive, send)
        path = scope["path"].removeprefix(scope.get("root_path", "")) or "/"
        if path in self.open_paths or self.authorized(scope.get("headers") or []):
            return await self.app(scope, receive, send)
        response = unauthorized().response()
        response.headers["www-authenticate"] = "Bearer"
        await response(scope, receive, send)


def install_auth(app, key_file: str | None, metrics_needs_key: bool, public: bool) -> int:
    """Add :class:`APIKeyAuth` as the app's outermost middleware; returns the number of keys."""
    keys = load_api_keys(key_file)
    if not keys and public:      # only with http.allow_unauthenticated (serve/args.py)
        logger.warning("the app listens on a non-loopback address and no API key is "
                       "configured (http.allow_unauthenticated): anyone who reaches the port "
                       "can use every model")
    open_paths = OPEN_PATHS if metrics_needs_key else OPEN_PATHS | {"/metrics"}
    app.add_middleware(APIKeyAuth, keys=keys, open_paths=open_paths)
    return len(keys)
