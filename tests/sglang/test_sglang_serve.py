"""The Serve app with an SGLang retriever (``retriever.engine: sglang``): Ray on this machine, the
SGLang engine with the hook inside the engine replica, the bundled SmolLM2 and its shipped heads.
/v1/rerank speaks the same Cohere/vLLM wire format and its scores equal the offline
``QRHeadRanker(backend="sglang")``; the OpenAI routes, which this engine does not serve, answer
404 saying why (a chat with documents 501: decode-time capture is vLLM's only); a malformed request is a 4xx and the server keeps serving.
"""

from __future__ import annotations

import httpx
import pytest

from qrhead_vllm.ranker import QRHeadRanker

pytestmark = pytest.mark.slow
MODEL = "smollm2-135m"


@pytest.fixture(scope="module")
def sglang_app():
    from qrhead_vllm.serve.launch import start_local, stop_local
    from tests.serve_harness import app_config
    cfg = app_config(**{"retriever.engine": "sglang", "retriever.kv_cache_sequences": 2,
                        "retriever.dtype": "float32"})
    url = start_local(cfg, num_cpus=2)
    try:
        yield url
    finally:
        stop_local()


@pytest.fixture(scope="module")
def offline(sglang_smollm2):
    # The session's engine, with the app's (default, shipped) head set.
    return QRHeadRanker(MODEL, backend=sglang_smollm2.backend)


def test_rerank_over_http_equals_the_offline_ranker(sglang_app, offline, hotpotqa_records):
    record = hotpotqa_records[-1]
    docs = [{"title": d["title"], "text": d["text"]} for d in record["documents"]]
    r = httpx.post(f"{sglang_app}/v1/rerank", timeout=900, json={
        "model": MODEL, "query": record["question"], "documents": docs, "top_n": 5,
        "qrhead": {"per_head": False}})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["qrhead"]["head_set"] == offline.heads.name
    want = offline.rank(record["question"], docs)
    assert [x["index"] for x in out["results"]] == [w.doc_id for w in want][:5]
    for got, w in zip(out["results"], want):
        assert got["relevance_score"] == pytest.approx(w.score, abs=1e-4)


def test_openai_routes_say_this_engine_only_scores(sglang_app):
    r = httpx.post(f"{sglang_app}/v1/chat/completions", timeout=60, json={
        "model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 404
    assert "SGLang retriever" in r.text


def test_chat_with_documents_is_refused_naming_why(sglang_app):
    r = httpx.post(f"{sglang_app}/v1/chat/completions", timeout=60, json={
        "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "documents": ["a"]})
    assert r.status_code == 501, r.text
    assert "engine: sglang" in r.json()["error"]["message"]    # and what to use instead


def test_bad_request_then_normal_service(sglang_app):
    r = httpx.post(f"{sglang_app}/v1/rerank", timeout=60, json={"model": MODEL, "query": "",
                                                                "documents": ["a"]})
    assert 400 <= r.status_code < 500, r.text
    r = httpx.post(f"{sglang_app}/v1/rerank", timeout=900, json={
        "model": MODEL, "query": "What is the capital of France?",
        "documents": ["Paris is the capital of France.", "Pasta is Italian food."]})
    assert r.status_code == 200 and r.json()["results"][0]["index"] == 0, r.text
