"""HTTP errors of the app: one JSON shape, a message that says what to fix, never a crash.

Body shape (OpenAI/vLLM's, plus Cohere's top-level ``message`` so both kinds of client find
the text where they look for it)::

    {"error": {"message": "...", "type": "invalid_request_error", "param": "top_n", "code": 400},
     "message": "..."}

Client mistakes found inside an engine replica cross the Ray handle as an *item* of its answer
stream, not as an exception (serve/resilience.py:answer_stream): Serve logs every exception that
leaves a replica with its full traceback, once per bad request. Other failures still cross as
exceptions; Ray wraps them (``RayTaskError``), so :func:`to_api_error` unwraps the cause before
mapping package errors to status codes.

Logging: a 4xx is one line (:class:`ClientErrorLog`: method, route, status, message, request
id), never a traceback; a 5xx is logged with its traceback (:func:`to_api_error`). In a replica
these lines go to the Serve log of that replica (:func:`log_to_serve`).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from qrhead_vllm import envs
from qrhead_vllm.errors import ContextOverflowError, HeadConfigError, InvalidInputError

logger = logging.getLogger(__name__)


class APIError(Exception):
    """An error with an HTTP status, raised anywhere in the app (picklable across handles)."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 type: str | None = None):
        super().__init__(status, message, param, type)
        self.status, self.message, self.param = status, message, param
        self.type = type or _default_type(status)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.status}, "message": self.message}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def _default_type(status: int) -> str:
    return {400: "invalid_request_error", 404: "NotFoundError", 413: "request_too_large",
            422: "invalid_request_error"}.get(status, "internal_error" if status >= 500
                                              else "invalid_request_error")


def unwrap(exc: BaseException) -> BaseException:
    """The original exception behind Ray's task-error wrappers."""
    seen = 0
    while getattr(exc, "cause", None) is not None and seen < 8:
        exc, seen = exc.cause, seen + 1
    return exc


def client_error(exc: BaseException) -> APIError | None:
    """The 4xx for a client's mistake (a bad request, not a failure of ours), else None."""
    exc = unwrap(exc)
    if isinstance(exc, APIError):
        return exc if exc.status < 500 else None
    if isinstance(exc, ContextOverflowError):
        return APIError(400, str(exc), "documents", "context_length_exceeded")
    if isinstance(exc, (InvalidInputError, HeadConfigError)):
        return APIError(400, str(exc))
    return None


def to_api_error(exc: BaseException) -> APIError:
    """Map anything raised while handling a request to an APIError (5xx only for real bugs,
    logged with their traceback)."""
    refused = client_error(exc)
    if refused is not None:
        return refused
    exc = unwrap(exc)
    if isinstance(exc, APIError):
        return exc
    logger.exception("internal error while serving a request", exc_info=exc)
    return APIError(500, f"internal error ({type(exc).__name__}: {exc}); the server keeps "
                         "serving, retry or report it", type="internal_error")


def validation_message(err: ValidationError) -> str:
    """Pydantic errors as 'field.path: what is wrong' lines, without pydantic's prefixes."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "body"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "is not a known option"
        elif e["type"] == "missing":
            msg = "is required"
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def _too_deep() -> APIError:
    return APIError(400, "request body nests JSON arrays/objects too deeply to parse; send a "
                         "flat JSON object")


def parse_json_body(raw: bytes, example: str) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 saying how the body should look."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise APIError(400, f"request body is not valid JSON ({e}); send a JSON object such as "
                            f"{example}") from None
    except RecursionError:      # [[[[...]]]]: the parser's recursion limit, not a server bug
        raise _too_deep() from None
    if not isinstance(body, dict):
        raise APIError(400, f"request body must be a JSON object such as {example}, "
                            f"got a JSON {type(body).__name__}")
    return body


def check_json_depth(raw: bytes) -> None:
    """400 for a JSON body nested beyond the parser's recursion limit (bodies forwarded to
    vLLM's app would otherwise fail there with a 500); other malformed JSON is left to the app
    that owns the route, which answers it with its own 400."""
    try:
        json.loads(raw)
    except RecursionError:
        raise _too_deep() from None
    except ValueError:
        pass


def install_handlers(app: FastAPI) -> None:
    """Every error of the ingress's own routes leaves as the JSON shape above."""

    @app.exception_handler(APIError)
    async def _api(_: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        return APIError(400, "; ".join(str(e.get("msg", e)) for e in exc.errors())).response()

    @app.exception_handler(Exception)
    async def _other(_: Request, exc: Exception):
        return to_api_error(exc).response()


class BodySizeLimit:
    """ASGI middleware: 413 for bodies over ``limit`` bytes, by header or by counting.

    Counting matters for chunked uploads, which carry no Content-Length; the APIError it raises
    while a route reads the body goes through the app's handlers like any other.
    """

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    def error(self, size: int) -> APIError:
        return APIError(413, f"request body is {size} bytes or more; the limit is {self.limit} "
                             "bytes (http.max_request_bytes): send fewer or shorter documents")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self.error(int(declared)).response()(scope, receive, send)
        seen = 0

        async def counting_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise self.error(seen)
            return message

        await self.app(scope, counting_receive, send)


# --- one log line per client error ------------------------------------------------------------
LOGGED_BODY_BYTES = 4096        # of a 4xx body, for its message: error bodies are small


class ClientErrorLog:
    """ASGI middleware: one log line for every 4xx response, whoever made it (our handlers, the
    API-key check, the body-size limit, vLLM's app behind the pass-through): method, route,
    status, message and request id. A client's mistake needs no traceback."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status, body = 0, bytearray()

        async def watching_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and 400 <= status < 500:
                body.extend(message.get("body", b"")[:LOGGED_BODY_BYTES - len(body)])
            await send(message)

        try:
            await self.app(scope, receive, watching_send)
        finally:
            if 400 <= status < 500:
                logger.info("%s %s %d %s (request id %s)", scope.get("method"),
                            scope.get("path"), status, error_message(bytes(body)),
                            request_id(scope))


def error_message(body: bytes) -> str:
    """The message of an error body: ours and vLLM's ({"error": {"message"}}), Cohere's
    ({"message"}), FastAPI's ({"detail"}), else the text itself, on one line."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        nested = data.get("error")
        text = data.get("message") or (nested.get("message") if isinstance(nested, dict)
                                       else nested) or data.get("detail")
    else:
        text = None
    text = str(text) if text else body.decode("utf-8", "replace")
    return " ".join(text.split())


def request_id(scope) -> str:
    """Serve's request id (the client's X-Request-Id when it sent one), which Serve puts on
    every log line of the request and in the response's X-Request-Id header."""
    try:
        from ray.serve.context import _get_serve_request_context
        rid = _get_serve_request_context().request_id
    except ImportError:         # pragma: no cover - Ray is part of the serve install
        rid = ""
    headers = dict(scope.get("headers") or [])
    return rid or headers.get(b"x-request-id", b"-").decode("latin-1")


class _ToServeLog(logging.Handler):
    """Hands each record to Serve's logger, whose handlers (set up per replica, replaced when
    Serve reconfigures them) add the request id and write the replica's log file."""

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger("ray.serve").handle(record)


def log_to_serve() -> None:
    """In a Serve replica, send the package's log lines to the replica's Serve log, at
    QRHEAD_LOG_LEVEL (``--log-level``; INFO by default) unless a level was set. Serve gives
    other loggers no handler: their warnings would reach the log only as unlabelled stderr,
    their info lines nowhere."""
    ours = logging.getLogger("qrhead_vllm")
    if not any(isinstance(h, _ToServeLog) for h in ours.handlers):
        ours.addHandler(_ToServeLog())
    ours.propagate = False
    if ours.level == logging.NOTSET:
        ours.setLevel(envs.log_level() or logging.INFO)
