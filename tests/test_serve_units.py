"""Serve app pieces without Ray or an engine: config, wire formats, windows, the ingress routes
against a fake upstream, and the ASGI bridge to vLLM's app."""

from __future__ import annotations

import asyncio
import pickle
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from pydantic import ValidationError


from qrhead_vllm.dtypes import resolve_dtype
from qrhead_vllm.errors import ContextOverflowError, HeadConfigError
from qrhead_vllm.scorers import ScoringOptions
from qrhead_vllm.serve.answer import split_context, with_trailer
from qrhead_vllm.serve.args import QRHeadServeConfig
from qrhead_vllm.serve.builder import load_config
from qrhead_vllm.serve.errors import APIError
from qrhead_vllm.serve.generator import call_asgi
from qrhead_vllm.serve.ingress import build_ingress_app
from qrhead_vllm.serve.metrics import merge_expositions
from qrhead_vllm.serve.rerank import parse_rerank

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "serve"


@pytest.mark.parametrize("name", ["cpu.yaml", "cpu-score-only.yaml", "cluster.yaml"])
def test_shipped_configs_load(name):
    cfg = QRHeadServeConfig.from_yaml(CONFIGS / name)
    assert cfg.shared_engine == (name == "cpu.yaml")
    assert cfg.retriever.score_only == (name == "cpu-score-only.yaml")
    if name == "cluster.yaml":
        assert cfg.generator.engine_overrides()["tensor_parallel_size"] == 8
        assert len(cfg.generator.deployment.placement_group_bundles) == 9


def test_config_overrides_and_errors():
    cfg = load_config({"config": str(CONFIGS / "cpu.yaml"), "retriever.dtype": "bfloat16",
                       "http": {"port": 9001}})
    assert cfg.retriever.dtype == "bfloat16" and cfg.http.port == 9001
    assert cfg.retriever.max_model_len == 4096      # untouched fields keep the file's value
    with pytest.raises(ValidationError, match="not_a_field"):
        QRHeadServeConfig.model_validate({"retriever": {"not_a_field": 1}})
    with pytest.raises(ValidationError, match="rescore_candidates"):
        QRHeadServeConfig.model_validate({"rag": {"top_k": 5, "rescore_candidates": 2}})


@pytest.mark.parametrize("retriever,message", [
    ({"pipeline_parallel_size": 2}, "pipeline_parallel_size must be 1"),
    ({"engine_args": {"kv_cache_dtype": "fp8"}}, "kv_cache_dtype must be 'auto'"),
])
def test_unscorable_retriever_configs_are_refused(retriever, message):
    with pytest.raises(ValidationError, match=message):
        QRHeadServeConfig.model_validate({"retriever": retriever})
    # A separate generator may use them: only the scoring engine is constrained.
    QRHeadServeConfig.model_validate({"generator": retriever})


def test_sglang_retriever_config():
    # retriever.engine: sglang maps the shared fields to SGLang's ServerArgs names; the
    # generator role stays on vLLM (the app bridges vLLM's OpenAI server only).
    cfg = load_config({"config": str(CONFIGS / "cpu.yaml"), "retriever.engine": "sglang",
                       "retriever.engine_args": {"chunked_prefill_size": 512}})
    assert cfg.retriever.engine_overrides() == {"dtype": resolve_dtype("auto"),
                                                "context_length": 4096,
                                                "tp_size": 1, "pp_size": 1,
                                                "chunked_prefill_size": 512}
    with pytest.raises(ValidationError, match=r"generator.engine must be one of \['vllm'\]"):
        QRHeadServeConfig.model_validate({"generator": {"engine": "sglang"}})


def test_score_only_retriever_needs_its_own_generator():
    with pytest.raises(ValidationError, match="score_only needs a separate generator"):
        QRHeadServeConfig.model_validate({"retriever": {"score_only": True}})
    with pytest.raises(ValidationError, match="last_layer is the cut of a score-only engine"):
        QRHeadServeConfig.model_validate({"retriever": {"last_layer": 20}, "generator": {}})
    with pytest.raises(ValidationError, match="score_only is not available on engine 'sglang'"):
        QRHeadServeConfig.model_validate({"retriever": {"score_only": True, "engine": "sglang"},
                                          "generator": {}})


@pytest.mark.parametrize("retriever,last_layer", [
    ({}, 23),                                          # the shipped default heads: layers 7-23
    ({"heads": [[0, 1], [12, 4]]}, 12),
    ({"heads": "default", "last_layer": 27}, 27),
])
def test_score_only_retriever_engine_gets_its_cut(retriever, last_layer):
    from qrhead_vllm.models import resolve_model
    from qrhead_vllm.serve.vllm_server import engine_kwargs_for
    cfg = load_config({"config": str(CONFIGS / "cpu-score-only.yaml"),
                       **{f"retriever.{k}": v for k, v in retriever.items()}})
    resolved = resolve_model(cfg.retriever.model)
    kwargs = engine_kwargs_for(cfg.retriever, resolved, True, ["m"])
    assert kwargs["additional_config"] == {"qrhead": {"last_layer": last_layer}}
    generator = engine_kwargs_for(cfg.generator, resolved, False, ["m"])
    assert "additional_config" not in generator      # the generator keeps the full model


def test_every_config_field_is_described():
    def walk(model):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            sub = field.annotation
            if isinstance(sub, type) and hasattr(sub, "model_fields"):
                walk(sub)
    walk(QRHeadServeConfig)


def test_rerank_parsing_normalises_documents():
    req = parse_rerank({"query": "q", "documents": ["a", {"text": "b", "title": "B"}],
                        "rank_fields": ["text"], "top_n": 2})   # unknown Cohere field ignored
    assert req.documents == [{"text": "a"}, {"text": "b", "title": "B"}]
    with pytest.raises(APIError, match=r"documents: \[1\] must be a string"):
        parse_rerank({"query": "q", "documents": ["a", 3]})
    with pytest.raises(APIError, match="larger than the number of documents"):
        parse_rerank({"query": "q", "documents": ["a"], "top_n": 2})
    with pytest.raises(APIError, match="qrhead.bogus: is not a known option"):
        parse_rerank({"query": "q", "documents": ["a"], "qrhead": {"bogus": 1}})


def test_a_request_gets_one_scoring_options_with_the_server_defaults():
    from qrhead_vllm.serve.scoring import request_options
    cfg = QRHeadServeConfig.model_validate({"retriever": {"heads": [[1, 2], [3, 4]],
                                                          "calibrate": False}}).retriever
    assert request_options(None, cfg) == ScoringOptions("qrhead", ((1, 2), (3, 4)), False)
    req = parse_rerank({"query": "q", "documents": ["a"], "qrhead": {"method": "icr"}})
    assert request_options(req.qrhead, cfg) == ScoringOptions("icr", "all", False)
    named = parse_rerank({"query": "q", "documents": ["a"],
                          "qrhead": {"method": "icr", "heads": "smollm2-135m-hotpotqa"}})
    with pytest.raises(APIError, match="every head; leave heads unset") as err:
        request_options(named.qrhead, cfg)
    assert err.value.status == 400
    with pytest.raises(APIError) as err:
        parse_rerank({"query": "q", "documents": ["a"], "qrhead": {"method": "bm25"}})
    assert "qrhead.method: Input should be 'qrhead' or 'icr'" in err.value.message
    with pytest.raises(APIError, match="unknown head set '/etc/passwd'"):
        request_options(parse_rerank({"query": "q", "documents": ["a"], "qrhead": {
            "heads": "/etc/passwd"}}).qrhead, cfg)


def test_split_context_paragraphs_then_words():
    text = "one two three\n\n  \n\n" + " ".join(f"w{i}" for i in range(25))
    parts = split_context(text, max_words=10)
    assert [len(p["text"].split()) for p in parts] == [3, 10, 10, 5]


def test_split_context_offsets_give_back_the_passage_text():
    text = ("\n  Title one.\tFirst  paragraph\nwraps here.\n \n\n" + "\n".join(
        f"w{i}" for i in range(12)) + "  \n\nLast.")
    parts = split_context(text, max_words=6)
    assert [text[p["start"]:p["end"]] for p in parts] == [p["text"] for p in parts]
    assert parts[0]["text"] == "Title one.\tFirst  paragraph\nwraps here."
    assert [p["text"].split() for p in parts[1:3]] == [[f"w{i}" for i in range(j, j + 6)]
                                                        for j in (0, 6)]
    assert len(parts) == 4
    assert parts[-1]["text"] == "Last." and parts[-1]["end"] == len(text)


def test_trailer_goes_just_before_done():
    async def chunks(*items):
        for item in items:
            yield item

    async def collect(*items):
        return b"".join([c async for c in with_trailer(chunks(*items), lambda: b"T")])
    assert asyncio.run(collect(b"data: 1\n\n", b"data: [DONE]\n\n")) == \
        b"data: 1\n\nTdata: [DONE]\n\n"
    assert asyncio.run(collect(b"data: 1\n\ndata: [DONE]\n\n")) == \
        b"data: 1\n\nTdata: [DONE]\n\n"


class FakeUpstream:
    """Stands in for the engine handles: records calls, answers with canned data."""

    def __init__(self):
        self.calls = []

    async def rerank(self, req, options):
        self.calls.append(("rerank", req, options))
        return {"id": "r", "model": "m", "results": [], "usage": {}}

    async def retrieve(self, req, options):
        self.calls.append(("retrieve", req, options))
        return {"passages": [{"rank": 1, "text": "P", "index": 0}], "retrieval": {}}

    async def health(self):
        pass

    async def open(self, method, path, query, headers, body):
        async def chunks():
            yield b'{"model": "m", "choices": [{"message": {"content": "A"}}], "usage": {}}'
        return {"status": 200, "headers": [("content-type", "application/json")]}, chunks()


def test_ingress_routes_and_error_shape():
    asyncio.run(_ingress_routes_and_error_shape())


async def _ingress_routes_and_error_shape():
    cfg = QRHeadServeConfig.model_validate({"http": {"max_request_bytes": 1000}})
    upstream = FakeUpstream()

    async def metrics_text():
        return "# TYPE ray_qrhead_documents_scored_total counter\n"

    app = build_ingress_app(upstream, cfg, metrics_text)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
    for path in ("/v1/rerank", "/rerank", "/v2/rerank"):
        r = await client.post(path, json={"query": "q", "documents": ["d"]})
        assert r.status_code == 200, r.text
    bad = await client.post("/v1/rerank", content=b"{nope", headers={"content-type": "a/json"})
    body = bad.json()
    assert bad.status_code == 400 and "not valid JSON" in body["error"]["message"]
    assert body["message"] == body["error"]["message"] and body["error"]["code"] == 400
    big = await client.post("/v1/rerank", content=b"x" * 2000)
    assert big.status_code == 413 and "max_request_bytes" in big.json()["error"]["message"]

    async def chunked():
        for _ in range(5):
            yield b"x" * 400
    r = await client.post("/v1/rerank", content=chunked())
    assert r.status_code == 413
    answer = await client.post("/v1/answer", json={"question": "q", "context": "a\n\nbc"})
    out = answer.json()
    assert answer.status_code == 200 and out["answer"] == "A"
    kind, retrieval, options = upstream.calls[-1]
    assert kind == "retrieve" and len(retrieval.passages) == 2
    assert retrieval.top_k == 2                 # the default top_k (3) capped at 2 passages
    assert options == ScoringOptions("qrhead", None, True)     # the server's defaults
    assert (out["passages"][0]["start"], out["passages"][0]["end"]) == (0, 1)
    assert set(out["timings"]) == {"retrieval_s", "generation_s"}
    mode = await client.post("/v1/answer", json={"question": "q", "context": "a", "mode": "x"})
    assert mode.status_code == 400 and "retrieve_then_answer" in mode.json()["error"]["message"]
    over = await client.post("/v1/answer", json={"question": "q", "context": "a\n\nb",
                                                 "top_k": 3})
    assert over.status_code == 400 and "at most 2" in over.json()["error"]["message"]
    scraped = await client.get("/metrics")          # ours, not forwarded to vLLM's app
    assert scraped.status_code == 200 and "qrhead_documents_scored" in scraped.text
    assert scraped.headers["content-type"].startswith("text/plain")
    health = await client.get("/health")
    assert health.json() == {"status": "ok", "dtype": resolve_dtype("auto")}
    proxied = await client.get("/v1/models")
    assert proxied.status_code == 200 and proxied.json()["model"] == "m"
    deep = b"[" * 100_000 + b"]" * 100_000            # RecursionError in json.loads
    cfg_big = QRHeadServeConfig.model_validate({"http": {"max_request_bytes": 10**6}})
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=build_ingress_app(
        upstream, cfg_big)), base_url="http://t")
    for path in ("/v1/rerank", "/v1/answer", "/v1/chat/completions"):
        r = await client.post(path, content=deep, headers={"content-type": "application/json"})
        assert r.status_code == 400 and "too deeply" in r.json()["error"]["message"], (path, r.text)


def test_metrics_of_several_nodes_merge_into_one_exposition():
    a = "# HELP m x\n# TYPE m counter\nm{NodeAddress=\"a\"} 1\n"
    b = "# HELP m x\n# TYPE m counter\nm{NodeAddress=\"b\"} 2\n"
    assert merge_expositions([a, b]).splitlines() == [
        "# HELP m x", "# TYPE m counter", 'm{NodeAddress="a"} 1', 'm{NodeAddress="b"} 2']


def test_call_asgi_streams_and_cancels():
    asyncio.run(_call_asgi_streams_and_cancels())


async def _call_asgi_streams_and_cancels():
    app, cancelled = FastAPI(), asyncio.Event()

    @app.post("/s")
    async def stream():
        async def gen():
            try:
                for i in range(1000):
                    yield f"data: {i}\n\n"
                    await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                cancelled.set()
                raise
        return StreamingResponse(gen(), media_type="text/event-stream")

    agen = call_asgi(app, "POST", "/s", "", [("content-type", "application/json")], b"{}")
    start = await agen.__anext__()
    assert start["status"] == 200
    assert (await agen.__anext__()).startswith(b"data: 0")
    await agen.aclose()                      # the client went away
    await asyncio.wait_for(cancelled.wait(), 5)


def test_rerank_throughput_workload_is_distinct_per_request():
    from bench.serve.rerank_throughput import workload
    from tests.conftest import HOTPOTQA_EVAL
    reqs = workload(12, 10, HOTPOTQA_EVAL)                # more requests than records: wraps
    assert len(reqs) == 12 and all(len(r["documents"]) == 10 for r in reqs)
    firsts = [r["documents"][0]["text"] for r in reqs]
    assert len(set(firsts)) == 12                          # no prefix-cache hit across requests
    assert reqs[10]["query"] == reqs[0]["query"]


@pytest.mark.parametrize("fields, reverse", [({}, True), ({"reverse_order": False}, False)])
def test_retriever_prompt_order_comes_from_the_config(smollm2_backend, fields, reverse):
    from qrhead_vllm.serve.retriever import Retriever

    cfg = QRHeadServeConfig.model_validate({"retriever": fields}).retriever
    retriever = Retriever(cfg, smollm2_backend, ["smollm2"])
    assert retriever.default.reverse_order is reverse
    assert retriever.ranker(ScoringOptions("icr")).reverse_order is reverse


@pytest.mark.parametrize("exc,status,text", [
    (HeadConfigError("heads beyond layer 23"), 400, "beyond layer 23"),
    (ContextOverflowError("too long"), 400, "too long"),
    (APIError(404, "no retriever role"), 404, "no retriever role"),
    (RuntimeError("engine core died"), 500, "engine core died"),
])
def test_what_a_server_raises_reaches_http_as_its_status(exc, status, text):
    # Servers raise across the Ray hop (the exception is pickled); the ingress maps it once.
    from types import SimpleNamespace

    from qrhead_vllm.serve.ingress import Upstream
    from qrhead_vllm.serve.resilience import ACCEPTED

    async def rerank(*_):                       # the server's stream: taken, then it raises
        yield ACCEPTED
        raise pickle.loads(pickle.dumps(exc))

    class Stream:
        def __init__(self, agen):
            self.__anext__, self.cancel = agen.__anext__, lambda: None
    handle = SimpleNamespace(options=lambda stream: SimpleNamespace(
        rerank=SimpleNamespace(remote=lambda *a: Stream(rerank(*a)))))
    with pytest.raises(APIError) as err:
        asyncio.run(Upstream(None, handle, 60).rerank(None, ScoringOptions()))
    assert err.value.status == status and text in err.value.message
