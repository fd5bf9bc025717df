"""Chat with documents through the real app (Ray, vLLM on CPU in fp32, the bundled SmolLM2 and
its shipped heads; tests/serve_harness.py), read with the openai SDK: the answer, the document
scores (equal to /v1/rerank's for the same documents and question) and the citations, streamed
and not; bad input is a 400 that says what to fix and the app keeps serving; a chat without
documents still goes to vLLM unchanged."""

from __future__ import annotations

import json

import httpx
import pytest

pytestmark = pytest.mark.slow
MODEL = "smollm2-135m"
QUESTION = "Which city is the capital of France?"
DOCUMENTS = ["Pasta is a staple food of Italian cuisine.",
             {"title": "Paris", "text": "Paris is the capital and largest city of France."},
             "The Eiffel Tower stands on the Champ de Mars in Paris."]
# fp32 on both routes, the same prompt up to the question: only batch shapes may differ.
SCORE_TOL = 1e-5


@pytest.fixture(scope="module")
def client(serve_app):
    from openai import OpenAI
    return OpenAI(base_url=f"{serve_app.url}/v1", api_key="unused", timeout=300)


def chat(client, stream=False, **extra):
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": QUESTION}], max_tokens=32,
        temperature=0, stream=stream, extra_body={"documents": DOCUMENTS, **extra})


def rerank_scores(app, question, documents, **qrhead) -> dict[int, float]:
    out = httpx.post(f"{app.url}/v1/rerank", timeout=300, json={
        "query": question, "documents": documents, "qrhead": qrhead}).json()
    return {r["index"]: r["relevance_score"] for r in out["results"]}


def check_citations(citations, text, num_docs):
    assert citations, "an answer of a sentence or more has at least one citation"
    for c in citations:
        assert text[c["start"]:c["end"]] == c["text"] and c["text"].strip()
        assert all(0 <= i < num_docs for i in c["document_indices"])
        assert len(c["shares"]) == len(c["document_indices"])
        assert all(0 < s <= 1 for s in c["shares"])


def test_answer_scores_and_citations_through_the_openai_sdk(serve_app, client):
    resp = chat(client)
    text = resp.choices[0].message.content
    ext = resp.model_extra["qrhead"]
    assert text.strip() and resp.usage.completion_tokens > 0
    scores = {d["index"]: d["score"] for d in ext["documents"]}
    assert scores == pytest.approx(rerank_scores(serve_app, QUESTION, DOCUMENTS),
                                   abs=SCORE_TOL, rel=0)
    assert [d["rank"] for d in ext["documents"]] == [1, 2, 3]
    assert ext["documents"][0]["index"] == 1, "the Paris paragraph ranks first"
    assert ext["calibrated"] is True and ext["heads"] == "default"
    check_citations(ext["citations"], text, len(DOCUMENTS))


def test_scores_equal_rerank_for_other_heads_and_hotpotqa_documents(serve_app, client):
    case = serve_app.cases[1]             # a HotpotQA question with its titled paragraphs
    resp = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": case["query"]}], max_tokens=8,
        temperature=0, extra_body={"documents": case["documents"],
                                   "qrhead": {"heads": "all", "calibrate": False,
                                              "citations": False}})
    ext = resp.model_extra["qrhead"]
    got = {d["index"]: d["score"] for d in ext["documents"]}
    want = rerank_scores(serve_app, case["query"], case["documents"], heads="all",
                         calibrate=False)
    assert got == pytest.approx(want, abs=SCORE_TOL, rel=0)
    assert ext["num_heads"] == 30 * 9 and "citations" not in ext


def test_streamed_scores_first_then_citations_before_done(serve_app, client):
    full = chat(client)
    chunks = list(chat(client, stream=True))
    first = chunks[0].model_extra["qrhead"]
    got = {d["index"]: d["score"] for d in first["documents"]}
    want = {d["index"]: d["score"] for d in full.model_extra["qrhead"]["documents"]}
    assert got == pytest.approx(want, abs=SCORE_TOL, rel=0)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    cited = [c for c in chunks if (c.model_extra or {}).get("qrhead", {}).get("citations")]
    assert cited and all(c.choices == [] and c.id == chunks[0].id for c in cited)
    streamed = [x for c in cited for x in c.model_extra["qrhead"]["citations"]]
    check_citations(streamed, text, len(DOCUMENTS))
    # sentence by sentence as they closed, the same citations as the whole answer's
    whole = full.model_extra["qrhead"]["citations"]
    assert [(c["start"], c["end"], c["document_indices"]) for c in streamed] == \
        [(c["start"], c["end"], c["document_indices"]) for c in whole]
    assert [s for c in streamed for s in c["shares"]] == \
        pytest.approx([s for c in whole for s in c["shares"]], abs=1e-5)


def test_vllm_sampling_options_apply(serve_app, client):
    plain = chat(client)
    assert "." in plain.choices[0].message.content            # so a stop at "." must cut it
    resp = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": QUESTION}], max_tokens=32,
        temperature=0, stop=["."], extra_body={"documents": DOCUMENTS})
    text = resp.choices[0].message.content
    assert "." not in text and resp.choices[0].finish_reason == "stop"
    assert plain.choices[0].message.content.startswith(text)
    check_citations(resp.model_extra["qrhead"]["citations"], text, len(DOCUMENTS))


@pytest.mark.parametrize("body,words", [
    ({"documents": []}, "documents must be a non-empty list"),
    ({"documents": [3]}, "documents[0] must be a string"),
    ({"messages": [{"role": "system", "content": "Be brief."},
                   {"role": "user", "content": QUESTION}]}, "exactly one user message"),
    ({"messages": [{"role": "assistant", "content": "Hi"}]}, "exactly one user message"),
    ({"documents": ["word " * 5000]}, "context"),
    ({"n": 2}, "n must be 1"),
    ({"qrhead": {"heads": "nope"}}, "unknown head set"),
    ({"temperature": -1}, "temperature"),
])
def test_bad_input_is_a_400_and_the_app_keeps_serving(serve_app, client, body, words):
    base = {"model": MODEL, "max_tokens": 4, "documents": DOCUMENTS,
            "messages": [{"role": "user", "content": QUESTION}]}
    r = httpx.post(f"{serve_app.url}/v1/chat/completions", json=base | body, timeout=300)
    assert r.status_code == 400, r.text
    assert words in r.json()["error"]["message"]
    assert chat(client).model_extra["qrhead"]["documents"]


def test_chat_without_documents_goes_to_vllm_unchanged(serve_app, client):
    messages = [{"role": "user", "content": QUESTION}]
    plain = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8,
                                           temperature=0)
    assert "qrhead" not in (plain.model_extra or {})
    nulled = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8,
                                            temperature=0, extra_body={"documents": None})
    assert nulled.choices[0].message.content == plain.choices[0].message.content
    assert "qrhead" not in (nulled.model_extra or {})


@pytest.mark.parametrize("stream", [False, True])
def test_answer_one_pass_scores_and_cites_from_its_generation(serve_app, stream):
    passages = [d if isinstance(d, dict) else {"text": d} for d in DOCUMENTS]
    body = {"question": QUESTION, "passages": passages, "top_k": 2, "max_tokens": 32,
            "mode": "one_pass", "stream": stream}
    want = rerank_scores(serve_app, QUESTION, DOCUMENTS)
    if not stream:
        out = httpx.post(f"{serve_app.url}/v1/answer", json=body, timeout=300).json()
        answer, citations, head = out["answer"], out["citations"], out
    else:
        with httpx.stream("POST", f"{serve_app.url}/v1/answer", json=body, timeout=300) as r:
            lines = [line.removeprefix("data: ") for line in r.iter_lines() if line]
        assert lines[-1] == "[DONE]"
        events = [json.loads(line) for line in lines[:-1]]
        assert [e["object"] for e in events][0] == "answer.passages"
        assert [e["object"] for e in events][-2:] == ["answer.citations", "answer.timings"]
        head = events[0]
        answer = "".join(e["choices"][0]["delta"].get("content") or ""
                         for e in events if e["object"] == "chat.completion.chunk" and e["choices"])
        citations = events[-2]["citations"]
    assert head["retrieval"]["passages"] == 3 and len(head["passages"]) == 2
    got = {p["index"]: p["score"] for p in head["passages"]}
    assert got == pytest.approx({i: want[i] for i in got}, abs=SCORE_TOL, rel=0)
    assert head["passages"][0]["index"] == 1
    check_citations(citations, answer, len(DOCUMENTS))


def test_answer_one_pass_refuses_a_context_longer_than_one_prompt(serve_app):
    body = {"question": QUESTION, "context": "word " * 5000, "mode": "one_pass"}
    r = httpx.post(f"{serve_app.url}/v1/answer", json=body, timeout=300)
    assert r.status_code == 400 and "retrieve_then_answer" in r.json()["error"]["message"]
