"""API keys (serve/auth.py): 401 in the OpenAI error shape without a valid key, checked from the
headers before any body is read; /health always open, /metrics as configured.

The ingress app runs here without Ray (its upstream stands in for the engines); the real app
with a key, through the openai and cohere SDKs, is in test_serve_auth_app.py.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from qrhead_vllm.serve.args import QRHeadServeConfig
from qrhead_vllm.serve.auth import APIKeyAuth, load_api_keys
from qrhead_vllm.serve.ingress import build_ingress_app
from tests.test_serve_units import FakeUpstream

KEYS = ["sk-first-key", "sk-second-key"]
RERANK = {"query": "q", "documents": ["d"]}


@pytest.fixture
def key_file(tmp_path, monkeypatch):
    monkeypatch.delenv("QRHEAD_API_KEY", raising=False)
    path = tmp_path / "keys"
    path.write_text("# clients\n" + "\n".join(KEYS) + "\n\n")
    return str(path)


def client_for(**http) -> httpx.AsyncClient:
    cfg = QRHeadServeConfig.model_validate({"http": {"max_request_bytes": 1000, **http}})
    app = build_ingress_app(FakeUpstream(), cfg, metrics_text=_metrics)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def _metrics():
    return "# TYPE m counter\n"


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_keys_come_from_the_environment_and_the_file(key_file, monkeypatch):
    assert load_api_keys(key_file) == KEYS
    monkeypatch.setenv("QRHEAD_API_KEY", "sk-env")
    assert load_api_keys(key_file) == ["sk-env", *KEYS]
    assert load_api_keys(None) == ["sk-env"]
    with pytest.raises(ValueError, match="cannot read"):
        load_api_keys(key_file + ".missing")


def test_every_route_but_health_needs_a_key(key_file):
    asyncio.run(_every_route_but_health_needs_a_key(key_file))


async def _every_route_but_health_needs_a_key(key_file):
    client = client_for(api_key_file=key_file)
    for headers in ({}, bearer("sk-wrong"), {"authorization": KEYS[0]},
                    {"authorization": f"Basic {KEYS[0]}"}):
        for method, path in (("POST", "/v1/rerank"), ("POST", "/v2/rerank"),
                             ("POST", "/v1/answer"), ("GET", "/v1/models"),
                             ("POST", "/v1/chat/completions"), ("GET", "/metrics")):
            r = await client.request(method, path, json=RERANK, headers=headers)
            body = r.json()
            assert r.status_code == 401, (path, headers, r.text)
            assert body["error"]["code"] == 401 and "Authorization: Bearer" in body["message"]
            assert body["error"]["type"] == "authentication_error"
            assert r.headers["www-authenticate"] == "Bearer"
    assert (await client.get("/health")).status_code == 200
    for key in KEYS:                                  # any configured key
        r = await client.post("/v1/rerank", json=RERANK, headers=bearer(key))
        assert r.status_code == 200, r.text
        assert (await client.get("/metrics", headers=bearer(key))).status_code == 200


def test_metrics_can_be_open(key_file):
    async def check():
        client = client_for(api_key_file=key_file, metrics_needs_key=False)
        assert (await client.get("/metrics")).status_code == 200
        assert (await client.get("/v1/models")).status_code == 401
    asyncio.run(check())


def test_no_key_configured_leaves_the_app_open(monkeypatch):
    monkeypatch.delenv("QRHEAD_API_KEY", raising=False)

    async def check():
        r = await client_for().post("/v1/rerank", json=RERANK)
        assert r.status_code == 200, r.text
    asyncio.run(check())


def test_key_from_environment(monkeypatch):
    monkeypatch.setenv("QRHEAD_API_KEY", "sk-env")

    async def check():
        client = client_for()
        assert (await client.post("/v1/rerank", json=RERANK)).status_code == 401
        r = await client.post("/v1/rerank", json=RERANK, headers=bearer("sk-env"))
        assert r.status_code == 200
    asyncio.run(check())


def test_key_is_checked_before_the_body_is_read(key_file):
    """An unauthenticated request is answered without one receive(); with a key, the existing
    413 for an oversized body still applies."""
    async def check():
        received = []

        async def receive():
            received.append(1)
            return {"type": "http.request", "body": b"x" * 5000, "more_body": False}

        sent = []

        async def send(message):
            sent.append(message)

        async def app(scope, receive, send):        # would read the body
            await receive()
        auth = APIKeyAuth(app, KEYS)
        scope = {"type": "http", "method": "POST", "path": "/v1/rerank", "root_path": "",
                 "headers": [(b"content-type", b"application/json")]}
        await auth(scope, receive, send)
        assert received == [] and sent[0]["status"] == 401

        client = client_for(api_key_file=key_file)
        big = b"x" * 2000
        assert (await client.post("/v1/rerank", content=big)).status_code == 401
        r = await client.post("/v1/rerank", content=big, headers=bearer(KEYS[1]))
        assert r.status_code == 413
    asyncio.run(check())
