"""Bad input against the real app: every malformed request gets a 4xx JSON error in the
OpenAI/Cohere shape whose message says what to fix, and the server keeps serving."""

from __future__ import annotations

import json

import httpx
import pytest


pytestmark = pytest.mark.slow

DOCS = ["Paris is the capital of France.", "Pasta is Italian food."]
LONG_DOCS = [" ".join(["lorem ipsum dolor sit amet"] * 60)] * 25     # ~9K tokens
CHAT = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4}


def rerank(**fields):
    return json.dumps({"query": "capital of France", "documents": DOCS, **fields}).encode()


def raw(obj) -> bytes:
    return json.dumps(obj).encode()


# (id, path, body bytes, expected status, words the message must contain)
CASES = [
    ("malformed-json", "/v1/rerank", b'{"query": "x", "documents": [', 400, "not valid JSON"),
    ("not-an-object", "/v1/rerank", raw(["a", "b"]), 400, "JSON object"),
    ("missing-query", "/v1/rerank", raw({"documents": DOCS}), 400, "query: is required"),
    ("empty-query", "/rerank", rerank(query=""), 400, "query: must be a non-empty string"),
    ("blank-query", "/v1/rerank", rerank(query="   "), 400, "query: must be a non-empty"),
    ("query-not-string", "/v1/rerank", rerank(query=42), 400, "query"),
    ("missing-documents", "/v1/rerank", raw({"query": "q"}), 400, "documents: is required"),
    ("empty-documents", "/v2/rerank", rerank(documents=[]), 400, "non-empty list"),
    ("documents-not-list", "/v1/rerank", rerank(documents="Paris"), 400, "non-empty list"),
    ("non-string-document", "/v1/rerank", rerank(documents=["ok", 7]), 400,
     "[1] must be a string"),
    ("document-without-text", "/v1/rerank", rerank(documents=[{"title": "t"}]), 400,
     "string 'text' field"),
    ("top-n-zero", "/v1/rerank", rerank(top_n=0), 400, "top_n: must be >= 1"),
    ("top-n-negative", "/v1/rerank", rerank(top_n=-3), 400, "omit top_n"),
    ("top-n-too-large", "/v1/rerank", rerank(top_n=5), 400, "pass at most 2"),
    ("top-n-not-int", "/v1/rerank", rerank(top_n="2"), 400, "must be an integer"),
    ("return-documents-not-bool", "/v1/rerank", rerank(return_documents="yes"), 400,
     "true or false"),
    ("unknown-model", "/v1/rerank", rerank(model="gpt-17"), 404, "does not exist"),
    ("unknown-extension-option", "/v1/rerank", rerank(qrhead={"temperature": 1}), 400,
     "qrhead.temperature: is not a known option"),
    ("unknown-head-set", "/v1/rerank", rerank(qrhead={"heads": "../../etc/passwd"}), 400,
     "unknown head set"),
    ("head-set-for-other-model", "/v1/rerank", rerank(qrhead={"heads": "gemma3-270m-hotpotqa"}),
     400, "gemma"),
    ("documents-exceed-context", "/v1/rerank", rerank(documents=LONG_DOCS), 400,
     "windowed"),
    ("chat-malformed-json", "/v1/chat/completions", b"{nope", 400, "JSON"),
    ("deeply-nested-json", "/v1/rerank", b"[" * 100_000 + b"]" * 100_000, 400, "too deeply"),
    ("chat-deeply-nested-json", "/v1/chat/completions", b"[" * 100_000 + b"]" * 100_000, 400,
     "too deeply"),
    ("chat-unknown-model", "/v1/chat/completions", raw({**CHAT, "model": "gpt-17"}), 404,
     "does not exist"),
    ("answer-no-source", "/v1/answer", raw({"question": "q"}), 400, "exactly one of"),
    ("answer-empty-question", "/v1/answer", raw({"question": "", "context": "x"}), 400,
     "question"),
    ("answer-unknown-generator", "/v1/answer",
     raw({"question": "q", "passages": DOCS, "model": "gpt-17"}), 404, "does not exist"),
    ("answer-typo-field", "/v1/answer", raw({"question": "q", "contxt": "x"}), 400,
     "contxt: is not a known option"),
    ("answer-empty-context", "/v1/answer", raw({"question": "q", "context": " \n\n "}), 400,
     "context must not be empty"),
    ("answer-top-k-over-passages", "/v1/answer",
     raw({"question": "q", "context": "a b\n\nc d", "top_k": 3}), 400, "pass at most 2"),
    ("answer-passage-over-window", "/v1/answer",
     raw({"question": "q", "passages": ["word " * 6000]}), 400, "shorter documents"),
]


@pytest.mark.parametrize("path,body,status,words", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_request_gets_4xx_with_a_fix(serve_app, path, body, status, words):
    r = httpx.post(f"{serve_app.url}{path}", content=body, timeout=600,
                   headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert words.lower() in err["message"].lower(), err["message"]
    assert err["code"] == status and err["type"]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_oversized_body_is_413(serve_app, chunked):
    limit = serve_app.config.http.max_request_bytes
    payload = b'{"query": "q", "documents": ["' + b"x" * (limit + 10) + b'"]}'
    content = (payload[i:i + 2**20] for i in range(0, len(payload), 2**20)) if chunked else payload
    r = httpx.post(f"{serve_app.url}/v1/rerank", content=content, timeout=600)
    assert r.status_code == 413, r.text[:300]
    assert "max_request_bytes" in r.json()["error"]["message"]


def test_windowed_rerank_scores_what_does_not_fit(serve_app):
    docs = [f"Passage {i}. " + " ".join(["lorem ipsum dolor sit amet"] * 30) for i in range(24)]
    docs[17] = "Paris is the capital and most populous city of France."
    body = {"query": "What is the capital of France?", "documents": docs, "top_n": 3,
            "qrhead": {"windowed": True}}
    r = httpx.post(f"{serve_app.url}/v1/rerank", json=body, timeout=600)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["qrhead"]["windows"] > 1 and out["results"][0]["index"] == 17


def test_server_still_serves_after_bad_input(serve_app):
    r = httpx.post(f"{serve_app.url}/v1/rerank", timeout=600,
                   json={"query": "capital of France", "documents": DOCS})
    assert r.status_code == 200 and r.json()["results"][0]["index"] == 0
    chat = httpx.post(f"{serve_app.url}/v1/chat/completions", json=CHAT, timeout=600)
    assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["content"]
