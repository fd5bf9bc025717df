"""One log line per client error (issue 27): a 4xx is logged once, as route, status, message and
request id, with no traceback, wherever it was found (the ingress, or the engine replica across
the Serve hop, where Serve would log a traceback for every exception that leaves it); a 5xx
keeps its traceback.

The unit tests run the ingress app without Ray (fake engine handles); the app tests send bad
requests to the real app and read the Serve log files Ray writes for its replicas and proxy.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from pathlib import Path

import httpx
import pytest

from qrhead_vllm.serve.args import QRHeadServeConfig
from qrhead_vllm.serve.errors import APIError, error_message
from qrhead_vllm.serve.ingress import Upstream, build_ingress_app
from qrhead_vllm.serve.resilience import ACCEPTED, answer_stream, open_stream

DOCS = ["Paris is the capital of France.", "Pasta is Italian food."]
ERRORS_LOGGER = "qrhead_vllm.serve.errors"


# --- the engine side: a client mistake is an item of the stream, not an exception -------------

async def items(stream) -> list:
    return [item async for item in stream]


def test_a_client_mistake_leaves_the_replica_as_an_item():
    async def unknown_heads():
        raise APIError(400, "qrhead.heads: unknown head set 'x'")
    ok, refused = (asyncio.run(items(answer_stream(f))) for f in (
        lambda: asyncio.sleep(0, {"results": []}), unknown_heads))
    assert ok == [ACCEPTED, {"results": []}]
    assert refused[0] == ACCEPTED and isinstance(refused[1], APIError)
    assert refused[1].status == 400


def test_a_failure_of_ours_is_still_raised_in_the_replica():
    async def broken():
        raise RuntimeError("engine core died")
    with pytest.raises(RuntimeError, match="engine core died"):
        asyncio.run(items(answer_stream(broken)))


class Stream:
    """A Serve response stream over fixed items (an exception item is raised there)."""

    def __init__(self, *items):
        self.items = [ACCEPTED, *items]

    def __aiter__(self):
        return self

    async def __anext__(self):
        if not self.items:
            raise StopAsyncIteration
        item = self.items.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    def cancel(self):
        pass


class Handle:
    """A deployment handle whose every streamed call yields ``items``."""

    def __init__(self, *items):
        self.stream_items = items

    def options(self, **_):
        return self

    def __getattr__(self, method):
        return self

    def remote(self, *args):
        return Stream(*self.stream_items)


def test_the_ingress_raises_a_refusal_it_was_handed():
    refused = APIError(404, "The model `gpt-17` does not exist.", "model")
    with pytest.raises(APIError) as err:
        asyncio.run(open_stream("retriever", lambda: Stream(refused), 60))
    assert err.value is refused


# --- the ingress: one line per 4xx, a traceback per 5xx ---------------------------------------

def post_rerank(engine: Handle, **headers) -> httpx.Response:
    app = build_ingress_app(Upstream(Handle(), engine, 60), QRHeadServeConfig())

    async def send():
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.post("/v1/rerank", json={"query": "q", "documents": DOCS},
                                     headers=headers)
    return asyncio.run(send())


def ours(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("qrhead_vllm")]


def test_a_refusal_from_the_engine_is_one_line_without_traceback(caplog):
    caplog.set_level(logging.INFO, logger="qrhead_vllm")
    refused = APIError(400, "qrhead.heads: unknown head set 'x'; use 'default'", "qrhead.heads")
    r = post_rerank(Handle(refused), **{"x-request-id": "rid-400"})
    assert r.status_code == 400, r.text
    (record,) = ours(caplog)
    assert record.getMessage() == ("POST /v1/rerank 400 qrhead.heads: unknown head set 'x'; use "
                                   "'default' (request id rid-400)")
    assert record.exc_info is None and record.name == ERRORS_LOGGER


def test_a_refusal_of_the_ingress_itself_is_one_line(caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="qrhead_vllm")
    monkeypatch.setenv("QRHEAD_API_KEY", "k" * 32)
    r = post_rerank(Handle({"results": []}), **{"x-request-id": "rid-401"})
    assert r.status_code == 401
    (record,) = ours(caplog)
    assert record.getMessage().startswith("POST /v1/rerank 401 missing or wrong API key")
    assert record.getMessage().endswith("(request id rid-401)") and record.exc_info is None


def test_an_answer_is_not_logged(caplog):
    caplog.set_level(logging.INFO, logger="qrhead_vllm")
    answer = {"id": "r", "model": "m", "results": [], "usage": {}}
    assert post_rerank(Handle(answer)).status_code == 200
    assert ours(caplog) == []


def test_a_failure_of_ours_keeps_its_traceback(caplog):
    caplog.set_level(logging.INFO, logger="qrhead_vllm")
    r = post_rerank(Handle(RuntimeError("engine core died")))
    assert r.status_code == 500 and "engine core died" in r.json()["message"]
    (record,) = ours(caplog)
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert "Traceback" in caplog.text


@pytest.mark.parametrize("body,message", [
    (b'{"error": {"message": "vLLM\'s\\n  wording", "code": 400}}', "vLLM's wording"),
    (b'{"message": "cohere", "error": {"message": "ours"}}', "cohere"),
    (b'{"detail": "Not Found"}', "Not Found"),
    (b"plain text", "plain text"),
])
def test_the_message_of_any_error_body(body, message):
    assert error_message(body) == message


# --- the real app: read the Serve logs --------------------------------------------------------

ENTRY_START = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) \d{4}-\d\d-\d\d ", re.M)


def log_entries(*patterns: str) -> list[str]:
    """Every entry of this session's log files matching ``patterns`` (an entry: a line with its
    level and time, plus the lines below it that have none, e.g. a traceback)."""
    import ray
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    entries = []
    for path in sorted(p for pattern in patterns for p in logs.glob(pattern)):
        text = path.read_text(errors="replace")
        starts = [m.start() for m in ENTRY_START.finditer(text)] + [len(text)]
        entries += [text[a:b] for a, b in zip(starts, starts[1:])]
    return entries


def serve_logs() -> list[str]:
    """The Serve log files of the replicas and the proxy."""
    return log_entries("serve/*.log")


def every_log() -> list[str]:
    """The Serve log files and each worker's stderr/stdout, where Serve copies its lines too:
    once vLLM has started in the engine replica, that replica's lines (a failed request's
    traceback among them) reach only its worker's stderr file."""
    return log_entries("serve/*.log", "worker-*.err", "worker-*.out")


def failed_requests() -> int:
    return sum("Request failed" in e for e in every_log())


CASES = [   # (id, body, status, words of the message): found in the ingress or in the engine
    ("ingress-400", {"query": "q", "documents": DOCS, "top_n": 0}, 400, "top_n: must be >= 1"),
    ("ingress-400-heads", {"query": "q", "documents": DOCS, "qrhead": {"heads": "no-such-heads"}},
     400, "unknown head set 'no-such-heads'"),
    ("engine-400", {"query": "q", "documents": DOCS, "qrhead": {"heads": "gemma3-270m-hotpotqa"}},
     400, "gemma"),
    ("engine-404", {"query": "q", "documents": DOCS, "model": "gpt-17"}, 404,
     "The model `gpt-17` does not exist"),
]


@pytest.mark.slow
@pytest.mark.parametrize("body,status,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_request_leaves_one_log_line(serve_app, body, status, words):
    rid = f"log-test-{uuid.uuid4().hex}"
    failed = failed_requests()
    r = httpx.post(f"{serve_app.url}/v1/rerank", json=body, timeout=600,
                   headers={"x-request-id": rid})
    assert r.status_code == status and words in r.json()["message"], r.text
    assert r.headers["x-request-id"] == rid
    deadline = time.monotonic() + 30                 # Serve's log handlers flush per record
    while True:
        mine = [e for e in serve_logs() if f"(request id {rid})" in e]
        if mine or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert len(mine) == 1, [e for e in serve_logs() if rid in e]
    assert f"POST /v1/rerank {status} " in mine[0] and words in mine[0]
    assert len(mine[0].strip().splitlines()) == 1
    entries = [e for e in every_log() if rid in e]
    assert not [e for e in entries if "Traceback" in e or "Request failed" in e], entries
    assert failed_requests() == failed, "a replica logged a failed request for a client error"
