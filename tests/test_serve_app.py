"""The real app over HTTP: Ray on this machine, vLLM on CPU, the bundled SmolLM2 and its shipped
head config (see tests/serve_harness.py for the shared, session-scoped app).

OpenAI routes with the openai SDK; rerank in Cohere format with httpx; HTTP scores against the
offline QRHeadRanker(backend="vllm"); 32 concurrent reranks mixed with streaming chat against
their serial results; retrieval-augmented answers over a long HotpotQA context.
"""

from __future__ import annotations

import asyncio
import json
import random
import time

import httpx
import pytest


pytestmark = pytest.mark.slow
MODEL = "smollm2-135m"
# fp32 on both paths, same engine arguments: differences can only come from batch shapes in
# the matmuls (vLLM batches concurrent requests), so we allow float noise, never a new order.
TOL = dict(rel=1e-4, abs=1e-5)


@pytest.fixture(scope="module")
def openai_client(serve_app):
    from openai import OpenAI
    return OpenAI(base_url=f"{serve_app.url}/v1", api_key="unused", timeout=300)


def post(app, path, body, timeout=600):
    return httpx.post(f"{app.url}{path}", json=body, timeout=timeout)


def test_models_lists_served_names(openai_client):
    ids = {m.id for m in openai_client.models.list().data}
    assert {"HuggingFaceTB/SmolLM2-135M-Instruct", MODEL} <= ids


def test_chat_non_streaming_and_streaming(openai_client):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    full = openai_client.chat.completions.create(model=MODEL, messages=messages,
                                                 max_tokens=16, temperature=0)
    assert "Paris" in full.choices[0].message.content
    chunks = list(openai_client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=16, temperature=0, stream=True))
    assert len(chunks) > 2, "a streamed answer arrives in several chunks"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content


def test_completions(openai_client):
    out = openai_client.completions.create(model=MODEL, prompt="The capital of France is",
                                           max_tokens=4, temperature=0)
    assert out.choices[0].text and out.usage.completion_tokens > 0


@pytest.mark.parametrize("path", ["/v1/rerank", "/rerank", "/v2/rerank"])
@pytest.mark.parametrize("top_n,return_documents", [(None, None), (2, None), (None, False),
                                                    (3, True)])
def test_rerank_cohere_format(serve_app, path, top_n, return_documents):
    case = serve_app.cases[0]
    body = {"model": MODEL, "query": case["query"], "documents": case["documents"]}
    if top_n is not None:
        body["top_n"] = top_n
    if return_documents is not None:
        body["return_documents"] = return_documents
    r = post(serve_app, path, body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert set(out) == {"id", "model", "results", "usage"}    # no extension unless asked for
    results = out["results"]
    assert len(results) == (top_n or len(case["documents"]))
    scores = [x["relevance_score"] for x in results]
    assert scores == sorted(scores, reverse=True)
    assert results[0]["index"] == 0            # "Paris is the capital ..." wins
    for x in results:
        if return_documents is False:
            assert "document" not in x
        else:
            assert x["document"] == {"text": case["documents"][x["index"]]}
    assert out["usage"]["prompt_tokens"] > 0


def test_rerank_scores_equal_offline_ranker(serve_app):
    for case, reference in zip(serve_app.cases, serve_app.reference):
        out = post(serve_app, "/v1/rerank", {"query": case["query"],
                                             "documents": case["documents"]}).json()
        got = {x["index"]: x["relevance_score"] for x in out["results"]}
        assert got == pytest.approx(reference, **TOL)
        assert [x["index"] for x in out["results"]] == sorted(reference, key=reference.get,
                                                              reverse=True)


def test_rerank_extension_object(serve_app):
    case = serve_app.cases[1]
    body = {"query": case["query"], "documents": case["documents"], "top_n": 3,
            "qrhead": {"heads": "all", "calibrate": False, "per_head": True}}
    out = post(serve_app, "/v1/rerank", body).json()
    ext = out["qrhead"]
    assert ext["heads"] == "all" and ext["num_heads"] == 30 * 9 and ext["calibrated"] is False
    assert len(ext["head_scores"]) == 3 and all(len(h) == 270 for h in ext["head_scores"])
    assert ext["windows"] == 1 and set(out) == {"id", "model", "results", "usage", "qrhead"}


def _rerank_requests(examples: list[dict], n: int) -> list[dict]:
    return [{"query": ex["question"], "top_n": 2,
             "documents": [d["text"] for d in ex["documents"][:4]]}
            for ex in (examples[i % len(examples)] for i in range(10, 10 + n))]


async def _burst(url: str, requests: list[dict], chats: int):
    async with httpx.AsyncClient(base_url=url, timeout=900) as client:
        async def chat() -> str:
            body = {"model": MODEL, "stream": True, "max_tokens": 24, "temperature": 0,
                    "messages": [{"role": "user", "content": "Name three colours."}]}
            async with client.stream("POST", "/v1/chat/completions", json=body) as s:
                assert s.status_code == 200
                return "".join([line async for line in s.aiter_lines()])
        reranks = [client.post("/v1/rerank", json=r) for r in requests]
        return await asyncio.gather(asyncio.gather(*reranks), asyncio.gather(
            *(chat() for _ in range(chats))))


def test_concurrent_reranks_with_streaming_chat_equal_serial(serve_app, hotpotqa_records):
    requests = _rerank_requests(hotpotqa_records, 32)
    serial = [post(serve_app, "/v1/rerank", r).json()["results"] for r in requests]
    responses, chats = asyncio.run(_burst(serve_app.url, requests, chats=4))
    assert all(c.endswith("data: [DONE]") for c in chats)
    for response, expected in zip(responses, serial):
        assert response.status_code == 200, response.text
        got = response.json()["results"]
        assert [x["index"] for x in got] == [x["index"] for x in expected]
        assert [x["relevance_score"] for x in got] == pytest.approx(
            [x["relevance_score"] for x in expected], **TOL)


def _long_context(example, records: list[dict]) -> tuple[dict, str]:
    """An evaluation-half HotpotQA question (never used for head detection) whose 10 passages
    are shuffled among 40 passages of other questions: ~6-7K tokens, more than one window."""
    others = [d for ex in records if ex["id"] != example.qid
              for d in ex["documents"]][:40]
    paragraphs = [f"{d.title}. {d.text}" for d in example.documents]
    paragraphs += [f"{d['title']}. {d['text']}" for d in others]
    random.Random(0).shuffle(paragraphs)
    return example, "\n\n".join(paragraphs)


def _sse_events(url: str, body: dict) -> list[str]:
    """The data payloads of a streamed answer, read as they arrive (httpx streaming)."""
    with httpx.stream("POST", f"{url}/v1/answer", json=body, timeout=600) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        return [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]


@pytest.mark.parametrize("stream", [False, True])
def test_answer_over_long_context_cites_gold(serve_app, stream, hotpotqa_split,
                                            hotpotqa_records):
    example, context = _long_context(hotpotqa_split[1][0], hotpotqa_records)
    body = {"question": example.query, "context": context, "top_k": 3, "stream": stream,
            "max_tokens": 48}
    if stream:
        events = _sse_events(serve_app.url, body)
        assert events[-1] == "[DONE]"
        first, last = json.loads(events[0]), json.loads(events[-2])
        assert first["object"] == "answer.passages" and set(first["timings"]) == {"retrieval_s"}
        assert last["object"] == "answer.timings"
        chunks = [json.loads(e) for e in events[1:-2]]
        assert len(chunks) > 2 and all(c["object"] == "chat.completion.chunk" for c in chunks)
        answer = "".join(c["choices"][0]["delta"].get("content") or ""
                         for c in chunks if c["choices"])
        passages, retrieval, timings = first["passages"], first["retrieval"], last["timings"]
        assert timings["retrieval_s"] == first["timings"]["retrieval_s"]
    else:
        r = post(serve_app, "/v1/answer", body)
        assert r.status_code == 200, r.text
        out = r.json()
        answer, passages, retrieval = out["answer"], out["passages"], out["retrieval"]
        timings = out["timings"]
    assert answer.strip()
    assert timings["retrieval_s"] > 0 and timings["generation_s"] > 0
    assert retrieval["windows"] > 1 and retrieval["rescored"] >= 3
    assert all(context[p["start"]:p["end"]] == p["text"] for p in passages)
    gold_texts = [d.text for d in example.documents if d.doc_id in example.gold_ids]
    cited = [p["text"] for p in passages]
    assert any(g in c for g in gold_texts for c in cited), (example.query, cited)
    assert [p["rank"] for p in passages] == [1, 2, 3]
    assert [p["score"] for p in passages] == sorted([p["score"] for p in passages], reverse=True)


def test_answer_from_passages_offsets_index_each_passage(serve_app):
    case = serve_app.cases[0]
    body = {"question": case["query"], "passages": case["documents"], "top_k": 2,
            "max_tokens": 8}
    r = post(serve_app, "/v1/answer", body)
    assert r.status_code == 200, r.text
    passages = r.json()["passages"]
    assert passages[0]["index"] == 0           # "Paris is the capital ..." wins
    for p in passages:
        given = case["documents"][p["index"]]
        assert (p["start"], p["end"]) == (0, len(given)) and given[p["start"]:p["end"]] == p["text"]


def _metric(text: str, name: str) -> float:
    """Sum of a metric's samples over every label set (nodes, models)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def test_metrics_endpoint_shows_qrhead_vllm_and_serve_metrics(serve_app):
    before = httpx.get(f"{serve_app.url}/metrics", timeout=60).text
    case = serve_app.cases[0]
    r = post(serve_app, "/v1/rerank", {"query": case["query"], "documents": case["documents"]})
    assert r.status_code == 200, r.text
    want = _metric(before, "ray_qrhead_documents_scored_total") + len(case["documents"])
    deadline = time.monotonic() + 120            # Ray's agent exports every few seconds
    while True:
        text = httpx.get(f"{serve_app.url}/metrics", timeout=60).text
        if _metric(text, "ray_qrhead_documents_scored_total") >= want:
            break
        assert time.monotonic() < deadline, "QRHead counters did not move after a rerank"
        time.sleep(2)
    assert _metric(text, "ray_qrhead_scoring_requests_total") >= 1
    assert _metric(text, "ray_qrhead_capture_seconds_count") >= 1
    assert "ray_vllm_" in text, "vLLM's engine metrics are missing from /metrics"
    assert "ray_serve_" in text, "Ray Serve's metrics are missing from /metrics"
