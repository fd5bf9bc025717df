"""The soak bench's traffic (bench/serve/soak.py): a fixed, seeded mix of requests, each with
its arrival (in units of the mean gap), and how one is sent."""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

MIX = {"rerank": 0.55, "chat": 0.15, "chat-stream": 0.10, "answer": 0.15, "bad": 0.05}
RERANK_DOCS = (5, 10, 20, 40, 70, 100)
ANSWER_DOCS = (5, 10)
CHAT_TOKENS = 16
PASSAGE_WORDS = 12     # "short documents": 100 of them (<= 3.4K prompt tokens) fit max_model_len 4096
# 70 % of what the CPU app served of this mix when saturated: 0.48 requests/s (tests/test_soak.py
# at 0.9 requests/s, 2026-12-07, AMD EPYC Zen 4, 2 cores shared with other jobs: 143 sent in
# 3 min, answered in 296 s, latency rising every window). The load bench's 2.0-2.8 reranks/s
# are of 3 passages; a rerank here has 5-100 (41 on average) and a chat queues behind them.
DEFAULT_RATE = 0.7 * 0.48
MIX_SIZE = 20000                    # more than any soak sends (30 min at 2 req/s: 3,600)


@dataclass(frozen=True)
class Item:
    route: str              # a key of MIX
    method: str
    path: str
    body: bytes
    stream: bool
    expect: str             # "200" or "4xx"
    at: float = 0.0         # arrival, in mean gaps from the start (seeded exponential)


def passages(data: str | Path | None) -> tuple[list[dict], list[str]]:
    """(short passages, questions) of the HotpotQA file."""
    from qrhead_vllm.datasets import load_hotpotqa
    examples = load_hotpotqa(data)
    docs = [{"title": d.title, "text": " ".join(d.text.split()[:PASSAGE_WORDS])}
            for ex in examples for d in ex.documents]
    return docs, [ex.query for ex in examples]


@dataclass
class Draw:
    """The two random streams of one request: ``shape`` (route, arrival, number of passages,
    streamed or not) restarts every window, so every window carries the same load and their
    p99s compare; ``content`` (question, which passages) never repeats, so no window is served
    from the prefix cache of an earlier one."""

    shape: random.Random
    content: random.Random


def build_mix(seed: int, model: str, plain: bool = False, data: str | Path | None = None,
              period: float | None = None) -> list[Item]:
    """:data:`MIX_SIZE` requests drawn with ``seed`` (the same list on every run with that seed;
    ``plain``: as plain vLLM serves them, see soak.py). ``period`` (in mean gaps: window
    seconds x rate) restarts the shape stream at each window boundary (:class:`Draw`)."""
    (docs, questions), content = passages(data), random.Random(seed + 1)
    routes, weights = list(MIX), list(MIX.values())
    items, base, at, shape, n = [], 0.0, 0.0, random.Random(seed), 0
    for _ in range(MIX_SIZE):
        gap = shape.expovariate(1.0)
        if period is not None and at + gap > period:    # the window is full: start the next
            base, at, shape, n = base + period, 0.0, random.Random(seed), 0
            gap = shape.expovariate(1.0)
        at += gap
        route = shape.choices(routes, weights)[0]
        make = PLAIN if plain else APP
        items.append(make[route](Draw(shape, content), docs, content.choice(questions), model,
                                 n, base + at))
        n += 1
    return items


def _json(route, path, body, at, stream=False, expect="200") -> Item:
    return Item(route, "POST", path, json.dumps(body).encode(), stream, expect, at)


def _sample(draw: Draw, docs, sizes) -> list[dict]:
    return draw.content.sample(docs, draw.shape.choice(sizes))


def _rerank(draw, docs, q, model, i, at) -> Item:
    chosen = _sample(draw, docs, RERANK_DOCS)
    return _json("rerank", "/v1/rerank", {"query": q, "documents": chosen, "top_n": 3,
                                          "return_documents": False}, at)


def _chat(route: str):
    def make(draw, docs, q, model, i, at) -> Item:
        body = {"model": model, "messages": [{"role": "user", "content": q}],
                "max_tokens": CHAT_TOKENS, "temperature": 0, "stream": route == "chat-stream"}
        return _json(route, "/v1/chat/completions", body, at, stream=route == "chat-stream")
    return make


def _answer(draw, docs, q, model, i, at) -> Item:
    chosen = _sample(draw, docs, ANSWER_DOCS)
    stream = draw.shape.random() < 0.5
    body = {"question": q, "passages": chosen, "top_k": 3, "max_tokens": CHAT_TOKENS,
            "stream": stream}
    return _json("answer", "/v1/answer", body, at, stream)


BAD = [("/v1/rerank", b'{"query": "x", "documents": ['),                       # not JSON
       ("/v1/rerank", json.dumps({"query": "x", "documents": []}).encode()),     # no documents
       ("/v1/answer", json.dumps({"question": "", "passages": ["a"]}).encode()),  # no question
       ("/v1/chat/completions", json.dumps({"model": "no-such-model", "messages": [
           {"role": "user", "content": "hi"}]}).encode())]                       # unknown model


def _bad(draw, docs, q, model, i, at) -> Item:
    path, body = BAD[i % len(BAD)]
    return Item("bad", "POST", path, body, False, "4xx", at)


APP = {"rerank": _rerank, "chat": _chat("chat"), "chat-stream": _chat("chat-stream"),
       "answer": _answer, "bad": _bad}


def _as_prompt(chosen: list[dict], q: str) -> str:
    return "\n\n".join(f"{d['title']}: {d['text']}" for d in chosen) + f"\n\nQuestion: {q}"


def _plain_rerank(draw, docs, q, model, i, at) -> Item:
    chosen = _sample(draw, docs, RERANK_DOCS)
    body = {"model": model, "prompt": _as_prompt(chosen, q), "max_tokens": 1, "temperature": 0}
    return _json("rerank", "/v1/completions", body, at)


def _plain_answer(draw, docs, q, model, i, at) -> Item:
    chosen = _sample(draw, docs, ANSWER_DOCS)
    stream = draw.shape.random() < 0.5
    body = {"model": model, "messages": [{"role": "user", "content": _as_prompt(chosen, q)}],
            "max_tokens": CHAT_TOKENS, "temperature": 0, "stream": stream}
    return _json("answer", "/v1/chat/completions", body, at, stream)


def _plain_bad(draw, docs, q, model, i, at) -> Item:
    path, body = BAD[i % len(BAD)]                     # vLLM's own routes
    path = "/v1/completions" if path != "/v1/chat/completions" else path
    return Item("bad", "POST", path, body, False, "4xx", at)


PLAIN = {**APP, "rerank": _plain_rerank, "answer": _plain_answer, "bad": _plain_bad}


async def send(http: httpx.AsyncClient, item: Item) -> tuple[int, float]:
    """(status, latency to the last byte); a transport failure is status 0."""
    t0 = time.monotonic()
    headers = {"content-type": "application/json"}
    try:
        async with http.stream(item.method, item.path, content=item.body,
                               headers=headers) as r:
            async for _ in r.aiter_raw():
                pass
            return r.status_code, time.monotonic() - t0
    except httpx.HTTPError:
        return 0, time.monotonic() - t0
