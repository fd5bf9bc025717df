"""What scores and citations cost on the served path: plain chat against chat with ``documents``
(issue 26, item 5), in one run against the real app.

    python bench/serve/chat_cost.py --start                 # CPU default config, start + stop
    python bench/serve/chat_cost.py --url http://127.0.0.1:8000 --root-pid <pid of qrhead serve>

Workload: TREC DL19 queries with their BM25 top-20 passages. Each question is asked twice, back
to back, in alternating order, streamed, greedy, ``--max-tokens`` tokens with ``ignore_eos``
(so both answers have the same length):

    plain       POST /v1/chat/completions, one user message holding the same documents and
                question as text (the /v1/rerank layout without its chat markers), no
                ``documents`` field: vLLM's own chat serving, no capture
    documents   the same question with ``documents`` (20 passages): document scores in the
                first chunk (real + null prefill captured) and citations after the last token
                (decode-time capture)

A fresh tag in front of every passage keeps the prefix cache from serving one request's
documents to another (real and null of one request still share them, as in production).
Measured per request: time to first token (first chunk with text), time per output token
(first to last text chunk over the tokens between them, counted by the usage block: a chunk may
carry more than one), the time to ``[DONE]``; and the ``VLLM::Worker`` RSS, sampled every
``--sample-s`` during each variant's requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import statistics
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))   # `python bench/serve/chat_cost.py`

from bench.report import git_commit, machine, now  # noqa: E402
from bench.serve.worker_memory import worker_rss_mb  # noqa: E402

VARIANTS = ("plain", "documents")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--start", action="store_true", help="start the app (--config), then stop")
    where.add_argument("--url")
    p.add_argument("--config", help="Serve config (default: configs/serve/cpu.yaml)")
    p.add_argument("--model", help="served model name (default: the config's retriever model)")
    p.add_argument("--root-pid", type=int, help="with --url: the process the engine runs under")
    p.add_argument("--api-key", default=os.environ.get("QRHEAD_API_KEY"))
    p.add_argument("--questions", type=int, default=6)
    p.add_argument("--docs", type=int, default=20)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--sample-s", type=float, default=0.25)
    p.add_argument("--out", type=Path, help="write the report here (markdown)")
    return p.parse_args(argv)


def plain_text(question: str, docs: list[dict]) -> str:
    """The documents and question as /v1/rerank lays them out, without chat markers (the chat
    template of the plain request adds its own)."""
    from qrhead_vllm.core.prompt import Passage, PromptTemplate, render
    bare = PromptTemplate("bare", "", "\n\n", "")
    text, _, _ = render(bare, question, [Passage(d["text"], d.get("title")) for d in docs])
    return text.strip()


def workload(n: int, num_docs: int) -> list[tuple[str, list[dict]]]:
    """(question, tagged passages) of the first ``n`` DL19 queries with ``num_docs`` candidates."""
    from qrhead_vllm.datasets import load_shared
    tag = uuid.uuid4().hex[:6]
    out = []
    for i, e in enumerate([e for e in load_shared("dl19") if len(e.documents) >= num_docs][:n]):
        docs = [{"title": d.title, "text": f"(ref {tag}-{i}-{j}) {d.text}"} if d.title
                else {"text": f"(ref {tag}-{i}-{j}) {d.text}"}
                for j, d in enumerate(e.documents[:num_docs])]
        out.append((e.query, docs))
    return out


def body(variant: str, model: str, question: str, docs: list[dict], max_tokens: int) -> dict:
    common = {"model": model, "stream": True, "max_tokens": max_tokens, "temperature": 0.0,
              "ignore_eos": True, "stream_options": {"include_usage": True}}
    if variant == "plain":
        return common | {"messages": [{"role": "user", "content": plain_text(question, docs)}]}
    return common | {"messages": [{"role": "user", "content": question}], "documents": docs,
                     "qrhead": {"citations": True}}


@dataclass
class Timing:
    ttft: float = float("nan")
    tpot: float = float("nan")
    done: float = float("nan")
    tokens: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None  # usage: the tokens generated, however chunked
    scored_tokens: int | None = None      # qrhead.prompt_tokens: real + null prefill
    citations: int | None = None
    error: str | None = None


async def stream_one(http: httpx.AsyncClient, payload: dict) -> Timing:
    """Send one streamed chat; time its text chunks."""
    t, stamps = Timing(), []
    start = time.perf_counter()
    async with http.stream("POST", "/v1/chat/completions", json=payload) as r:
        if r.status_code != 200:
            t.error = f"{r.status_code} {(await r.aread())[:300]!r}"
            return t
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            ext = event.get("qrhead") or {}
            t.scored_tokens = ext.get("prompt_tokens", t.scored_tokens)
            if "citations" in ext:
                t.citations = len(ext["citations"])
            if event.get("usage"):
                t.prompt_tokens = event["usage"]["prompt_tokens"]
                t.completion_tokens = event["usage"].get("completion_tokens")
            if any((c.get("delta") or {}).get("content") for c in event.get("choices") or []):
                stamps.append(time.perf_counter())
    t.done = time.perf_counter() - start
    # Per token, not per chunk: a stream may carry several tokens in one chunk (our route's
    # chunks need not match vLLM's one-token deltas), so the usage count is the divisor.
    t.tokens = t.completion_tokens or len(stamps)
    if stamps:
        t.ttft = stamps[0] - start
        t.tpot = (stamps[-1] - stamps[0]) / max(t.tokens - 1, 1)
    return t


@dataclass
class RssSampler:
    """``VLLM::Worker`` RSS every ``every`` seconds, into the list of the current variant."""

    root_pid: int
    every: float
    samples: dict[str, list[float]] = field(default_factory=lambda: {v: [] for v in VARIANTS})
    current: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self._stop.wait(self.every):
            if self.current is not None:
                self.samples[self.current].append(worker_rss_mb(self.root_pid))

    def __enter__(self):
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


async def run(url: str, model: str, args, root_pid: int) -> tuple[dict, dict, float]:
    headers = {"authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    questions = workload(args.questions + 1, args.docs)
    got: dict[str, list[Timing]] = {v: [] for v in VARIANTS}
    async with httpx.AsyncClient(base_url=url, timeout=900, headers=headers) as http:
        q, docs = questions[0]                  # warm-up of both paths, not recorded
        for v in VARIANTS:
            await stream_one(http, body(v, model, q, docs, args.max_tokens))
        idle = worker_rss_mb(root_pid)
        with RssSampler(root_pid, args.sample_s) as rss:
            for k, (q, docs) in enumerate(questions[1:]):
                for v in (VARIANTS if k % 2 == 0 else VARIANTS[::-1]):
                    rss.current = v
                    got[v].append(await stream_one(http, body(v, model, q, docs,
                                                              args.max_tokens)))
                    rss.current = None
                    t = got[v][-1]
                    print(f"[chat_cost] {k} {v}: ttft {t.ttft:.2f}s tpot {t.tpot * 1000:.1f}ms "
                          f"tokens {t.tokens} prompt {t.prompt_tokens} scored {t.scored_tokens} "
                          f"citations {t.citations} {t.error or ''}", file=sys.stderr, flush=True)
    return got, rss.samples, idle


def med(values) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def report(got: dict, rss: dict, idle: float, facts: dict) -> str:
    rows = {}
    for v in VARIANTS:
        ok = [t for t in got[v] if t.error is None]
        rows[v] = {"requests": f"{len(ok)} of {len(got[v])}",
                   "prompt tokens": med(t.prompt_tokens or float("nan") for t in ok),
                   "ttft": med(t.ttft for t in ok), "tpot": med(t.tpot for t in ok),
                   "done": med(t.done for t in ok), "tokens": med(t.tokens for t in ok),
                   "rss_med": med(rss[v]), "rss_max": max(rss[v], default=float("nan"))}
    p, d = rows["plain"], rows["documents"]
    pairs = list(zip(got["plain"], got["documents"]))
    ratio = lambda key: med(getattr(b, key) / getattr(a, key) for a, b in pairs  # noqa: E731
                            if a.error is None and b.error is None)
    lines = [f"- **{k}**: {v}" for k, v in facts.items()] + [
        f"- **VLLM::Worker RSS after the warm-up, idle**: {idle:.0f} MB", "",
        "| variant | requests | prompt tokens (median) | time to first token | time per output "
        "token | time to [DONE] | output tokens | worker RSS median / max |",
        "|---|---|---|---|---|---|---|---|"]
    for v in VARIANTS:
        r = rows[v]
        lines.append(f"| {v} | {r['requests']} | {r['prompt tokens']:.0f} | {r['ttft']:.2f} s | "
                     f"{r['tpot'] * 1000:.1f} ms | {r['done']:.2f} s | {r['tokens']:.0f} | "
                     f"{r['rss_med']:.0f} / {r['rss_max']:.0f} MB |")
    lines.append(f"| documents / plain (median of paired ratios) | | | {ratio('ttft'):.3f} | "
                 f"{ratio('tpot'):.3f} | {ratio('done'):.3f} | | "
                 f"{d['rss_max'] / p['rss_max']:.3f} (max) |")
    scored = [t.scored_tokens for t in got["documents"] if t.scored_tokens]
    cites = [t.citations for t in got["documents"] if t.citations is not None]
    lines += ["", f"Documents: `qrhead.prompt_tokens` (real + null prefill) median "
                  f"{med(scored):.0f}; citations per answer median {med(cites):.0f}."]
    errors = [f"{v}: {t.error}" for v in VARIANTS for t in got[v] if t.error]
    if errors:
        lines += ["", "Errors:", *[f"- {e}" for e in errors]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    started, stop = now(), None
    if args.start:
        from qrhead_vllm.serve.args import QRHeadServeConfig
        from qrhead_vllm.serve.builder import DEFAULT_CONFIG
        from qrhead_vllm.serve.launch import free_port, start_local, stop_local
        cfg = QRHeadServeConfig.from_yaml(args.config or DEFAULT_CONFIG,
                                          **{"http.port": free_port()})
        url, model, stop, root_pid = start_local(cfg, num_cpus=2), cfg.retriever.model, \
            stop_local, os.getpid()
    else:
        url, model, root_pid = args.url, args.model, args.root_pid or os.getpid()
    try:
        got, rss, idle = asyncio.run(run(url, model or "smollm2-135m", args, root_pid))
    finally:
        if stop is not None:
            stop()
    facts = {"date": started, "machine": machine(), "commit": git_commit(),
             "command": f"`python bench/serve/chat_cost.py {shlex.join(argv)}`",
             "config": args.config or "configs/serve/cpu.yaml (the CPU default)",
             "workload": f"{args.questions} DL19 questions x {args.docs} BM25 passages, streamed, "
                         f"greedy, {args.max_tokens} tokens (ignore_eos), plain and documents "
                         "back to back in alternating order"}
    text = report(got, rss, idle, facts)
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
