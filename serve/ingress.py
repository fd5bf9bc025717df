"""The HTTP ingress: our routes (rerank, answer, health) and a pass-through to vLLM's OpenAI app.

Routes:

* ``POST /v1/rerank``, ``/rerank``, ``/v2/rerank`` → the retriever (serve/rerank.py format);
* ``POST /v1/answer`` → retriever, then generator (serve/answer_flow.py; wire format
  serve/answer.py);
* ``GET /health`` → 200 when the retriever can score (serve/health.py), else 503, with the
  retriever's dtype (``auto`` resolved); the one route open without an API key (serve/auth.py);
* ``GET /metrics`` → the cluster's Prometheus metrics: Ray Serve's, vLLM's and QRHead's
  (serve/metrics.py);
* ``GET /docs`` and ``/openapi.json`` → the OpenAPI page and schema of the routes above, behind
  the API key like every route (a browser cannot send the key: fetch the schema with it);
* ``POST /v1/chat/completions`` with ``documents`` → the retriever's engine, which answers
  with document scores and citations from the one generation (serve/chat_documents.py);
* anything else (``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``, ``/tokenize``,
  ...) is forwarded unchanged to the generator deployment, where vLLM's own app handles it.

The ingress is cheap (parse, validate, route) and holds no engine; it is built at replica start
(``__serve_build_asgi_app__``) so its body-size limit and handles come from the config.
"""

from __future__ import annotations

import json
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve

from qrhead_vllm import __version__
from qrhead_vllm.dtypes import resolve_dtype
from qrhead_vllm.scorers import ScoringOptions
from qrhead_vllm.serve.answer import EXAMPLE as ANSWER_EXAMPLE, Retrieval, parse_answer
from qrhead_vllm.serve.answer_flow import answer as answer_flow
from qrhead_vllm.serve.args import QRHeadServeConfig
from qrhead_vllm.serve.auth import install_auth
from qrhead_vllm.serve.chat_documents import DocumentChat, parse_document_chat, wants_documents
from qrhead_vllm.serve.errors import (BodySizeLimit, ClientErrorLog, check_json_depth,
                                     install_handlers, log_to_serve, parse_json_body)
from qrhead_vllm.serve.metrics import CONTENT_TYPE, cluster_metrics
from qrhead_vllm.serve.rerank import EXAMPLE as RERANK_EXAMPLE, RerankRequest, parse_rerank
from qrhead_vllm.serve.resilience import health_check, open_stream
from qrhead_vllm.serve.scoring import request_options

RERANK_PATHS = ("/v1/rerank", "/rerank", "/v2/rerank")
OPENAPI_DESCRIPTION = (
    "QRHead re-ranking and retrieval-augmented answers. Send 'Authorization: Bearer <key>' when "
    "the app has an API key (every route but /health needs it). Every other path "
    "(/v1/chat/completions, /v1/completions, /v1/models, /tokenize, ...) goes unchanged to "
    "vLLM's OpenAI-compatible server, whose schema is vLLM's own.")
PROXY_METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH"]
SKIP_REQUEST_HEADERS = {"host", "content-length", "transfer-encoding", "connection"}


class Upstream:
    """Typed calls into the engine servers (serve/server.py): each sends the parsed request
    and the ScoringOptions built from it, never a method name. Each is a stream opened by
    serve/resilience.py:open_stream, the one place that bounds the wait for a replica and maps
    every failure to an APIError (a lost, late or full engine: a 503 with Retry-After)."""

    def __init__(self, generator, retriever, replica_wait_s: float):
        self.generator, self.retriever = generator, retriever
        self.replica_wait_s = replica_wait_s

    async def rerank(self, req: RerankRequest, options: ScoringOptions) -> dict[str, Any]:
        return await self._score(lambda handle: handle.rerank.remote(req, options))

    async def retrieve(self, req: Retrieval, options: ScoringOptions) -> dict[str, Any]:
        return await self._score(lambda handle: handle.retrieve.remote(req, options))

    async def _score(self, send: Callable[[Any], Any]) -> dict[str, Any]:
        """One retriever call, ``send(streaming handle)``: its single answer (scoring is
        idempotent, so a call that lost its replica is sent once more;
        serve/resilience.py)."""
        handle = self.retriever.options(stream=True)
        result, _ = await open_stream("retriever", lambda: send(handle), self.replica_wait_s)
        return result

    async def health(self) -> None:
        """The retriever's check_health (a scoring probe at most every 30 s); 503 if it fails,
        or if no replica answers it within replica_wait_s (restarting, its node lost)."""
        await health_check("retriever", self.retriever.check_health.remote(),
                           self.replica_wait_s)

    async def open(self, method: str, path: str, query: str, headers: list[tuple[str, str]],
                   body: bytes) -> tuple[dict[str, Any], AsyncIterator[bytes]]:
        """Start an HTTP exchange with vLLM's app: (status + headers, remaining body chunks)."""
        remote = self.generator.options(stream=True).openai.remote
        start, stream = await open_stream(
            "generator", lambda: remote(method, path, query, headers, body), self.replica_wait_s)
        return start, _drain(stream)

    async def chat_documents(self, req: DocumentChat, options: ScoringOptions
                             ) -> tuple[dict[str, Any], AsyncIterator[bytes]]:
        """A chat with documents, on the engine that scores (serve/chat_documents.py)."""
        remote = self.retriever.options(stream=True).chat_documents.remote
        start, stream = await open_stream("retriever", lambda: remote(req, options),
                                          self.replica_wait_s)
        return start, _drain(stream)


async def _drain(stream) -> AsyncIterator[bytes]:
    """The body chunks; if the client goes away first, cancel the request inside vLLM."""
    finished = False
    try:
        async for chunk in stream:
            yield chunk
        finished = True
    finally:
        if not finished:
            stream.cancel()


def json_body(example: str) -> dict[str, Any]:
    """The OpenAPI request body of a route that parses its JSON itself (for the 400s' wording),
    so FastAPI cannot infer it: the example the 400s also show."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"type": "object"}, "example": json.loads(example)}}}}


def build_ingress_app(upstream: Upstream, cfg: QRHeadServeConfig,
                      metrics_text=cluster_metrics) -> FastAPI:
    """The ingress FastAPI app (a plain function so tests can run it without Ray)."""
    app = FastAPI(title="qrhead-vllm", description=OPENAPI_DESCRIPTION, version=__version__,
                  docs_url="/docs", openapi_url="/openapi.json", redoc_url=None)
    install_handlers(app)
    app.add_middleware(BodySizeLimit, limit=cfg.http.max_request_bytes)
    # Added later = further out: the key is checked from the headers before any body is read,
    # and every 4xx, the key check's 401 included, is logged as one line.
    install_auth(app, cfg.http.api_key_file, cfg.http.metrics_needs_key,
                 public=not cfg.http.loopback)
    app.add_middleware(ClientErrorLog)

    dtype = resolve_dtype(cfg.retriever.dtype, log=False)

    @app.get("/health")
    async def health() -> dict[str, str]:
        await upstream.health()         # 503 unless the retriever can score (serve/health.py)
        return {"status": "ok", "dtype": dtype}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(await metrics_text(), media_type=CONTENT_TYPE)

    async def rerank(request: Request) -> JSONResponse:
        req = parse_rerank(parse_json_body(await request.body(), RERANK_EXAMPLE))
        return JSONResponse(await upstream.rerank(req, request_options(req.qrhead,
                                                                       cfg.retriever)))

    for path in RERANK_PATHS:
        app.add_api_route(path, rerank, methods=["POST"], summary="Rerank documents for a query",
                          openapi_extra=json_body(RERANK_EXAMPLE))

    @app.post("/v1/answer", summary="Retrieve passages, then answer from them",
              openapi_extra=json_body(ANSWER_EXAMPLE))
    async def answer(request: Request) -> Response:
        req = parse_answer(parse_json_body(await request.body(), ANSWER_EXAMPLE))
        return await answer_flow(req, upstream, cfg)

    @app.api_route("/{path:path}", methods=PROXY_METHODS, include_in_schema=False)
    async def forward(path: str, request: Request) -> Response:
        body = await request.body()
        if body and "json" in request.headers.get("content-type", ""):
            check_json_depth(body)
        headers = [(k, v) for k, v in request.headers.items()
                   if k.lower() not in SKIP_REQUEST_HEADERS]
        chat = wants_documents(request.method, path, body)
        if chat is not None:        # ours: answer, scores and citations (serve/chat_documents.py)
            req = parse_document_chat(chat)
            start, chunks = await upstream.chat_documents(
                req, request_options(req.options, cfg.retriever))
        else:
            start, chunks = await upstream.open(request.method, "/" + path, request.url.query,
                                                headers, body)
        return StreamingResponse(chunks, status_code=start["status"],
                                 headers=dict(start["headers"]))

    return app


@serve.deployment(name="ingress")
@serve.ingress()
class QRHeadIngress:
    """Ray Serve ingress; ``generator`` and ``retriever`` may be the same deployment."""

    def __init__(self, generator, retriever, cfg: QRHeadServeConfig):
        log_to_serve()      # the 4xx lines and 5xx tracebacks, in this replica's Serve log
        self.upstream = Upstream(generator, retriever, cfg.http.replica_wait_s)
        self.cfg = cfg

    async def __serve_build_asgi_app__(self) -> FastAPI:
        return build_ingress_app(self.upstream, self.cfg)
