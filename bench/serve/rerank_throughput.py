"""Rerank throughput of the running Serve app: requests/s and documents/s at 1, 4 and 16
concurrent clients (issue 4).

    qrhead serve &                                         # or any running app
    python bench/serve/rerank_throughput.py --url http://127.0.0.1:8000 --write docs/serving.md
    python bench/serve/rerank_throughput.py --start --write docs/serving.md   # start, bench, stop
    # before / after the score-only retriever (issue 13), one after the other, same machine:
    python bench/serve/rerank_throughput.py --start --config configs/serve/cpu.yaml \
        --config configs/serve/cpu-score-only.yaml --write docs/serving.md

Workload: HotpotQA questions, each with its own 10 candidate passages (~1.3K prompt tokens),
one question per request, every request distinct. A random tag is put in front of the first
passage of each request so the engine's prefix cache cannot serve a prompt it saw in an
earlier run (the real and null passes of one request still share their prefix, as in
production). Clients are closed-loop: each sends its next request when the last one returns.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import statistics
import sys
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))   # `python bench/serve/rerank_throughput.py`

from bench.report import git_commit, machine, now, percentile  # noqa: E402
from qrhead_vllm.datasets import load_hotpotqa  # noqa: E402

START, END = "<!-- bench:rerank_throughput:start -->", "<!-- bench:rerank_throughput:end -->"


def workload(n: int, docs_per_request: int, path: Path | None = None) -> list[dict]:
    examples, tag = load_hotpotqa(path), uuid.uuid4().hex[:8]   # default: the shared data
    out = []
    for i in range(n):
        ex = examples[i % len(examples)]
        docs = [{"title": d.title, "text": d.text} for d in ex.documents[:docs_per_request]]
        docs[0] = {**docs[0], "text": f"(ref {tag}-{i}) {docs[0]['text']}"}
        out.append({"query": ex.query, "documents": docs, "top_n": 3,
                    "return_documents": False})
    return out


async def run_level(url: str, requests: list[dict], clients: int) -> dict:
    """Closed-loop clients draining one shared queue; wall time covers the whole level."""
    queue: asyncio.Queue = asyncio.Queue()
    for r in requests:
        queue.put_nowait(r)
    latencies, tokens, failures = [], [], []

    async def client(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            body = queue.get_nowait()
            t0 = time.perf_counter()
            r = await http.post("/v1/rerank", json=body)
            latencies.append(time.perf_counter() - t0)
            if r.status_code != 200:
                failures.append(r.text[:200])
            else:
                tokens.append(r.json()["usage"]["prompt_tokens"])

    async with httpx.AsyncClient(base_url=url, timeout=1800) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - t0
    docs = sum(len(r["documents"]) for r in requests)
    lat = sorted(latencies)
    return {"clients": clients, "requests": len(requests), "failed": len(failures),
            "wall_s": wall, "req_s": len(requests) / wall, "docs_s": docs / wall,
            "tok_s": sum(tokens) / wall, "p50_s": statistics.median(lat),
            "p95_s": percentile(lat, 0.95)}


def table(rows: list[dict]) -> str:
    lines = ["| clients | requests | requests/s | documents/s | prompt tokens/s | p50 latency "
             "| p95 latency | failed |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['clients']} | {r['requests']} | {r['req_s']:.2f} | "
                     f"{r['docs_s']:.1f} | {r['tok_s']:.0f} | {r['p50_s']:.2f} s | "
                     f"{r['p95_s']:.2f} s | {r['failed']} |")
    return "\n".join(lines)


def write_doc(path: Path, block: str) -> None:
    """Replace the marked results block of the doc (append one if it has none)."""
    text = path.read_text() if path.exists() else ""
    new = f"{START}\n{block}\n{END}"
    if START in text and END in text:
        text = text[:text.index(START)] + new + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n" + new + "\n"
    path.write_text(text)


async def bench(url: str, levels: list[int], per_client: int, minimum: int, docs: int):
    info = httpx.get(f"{url}/v1/models", timeout=60).json()["data"][0]["id"]
    warm = workload(2, docs)
    await run_level(url, warm, 1)                 # first-request costs out of the numbers
    rows = []
    for clients in levels:
        requests = workload(max(minimum, per_client * clients), docs)
        rows.append(await run_level(url, requests, clients))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    return info, rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8000", help="base URL of the app")
    p.add_argument("--start", action="store_true", help="start the app (free port), bench "
                   "it, stop it; once per --config")
    p.add_argument("--config", action="append", type=Path, help="with --start: the serve "
                   "config to start (repeat it to bench several, one after the other; default: "
                   "configs/serve/cpu.yaml)")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--per-client", type=int, default=2, help="requests per client per level")
    p.add_argument("--min-requests", type=int, default=8, help="at least this many per level")
    p.add_argument("--docs", type=int, default=10, help="documents per request (max 10)")
    p.add_argument("--write", type=Path, help="put the results block into this markdown file")
    args = p.parse_args(argv)
    facts = {"date": now(), "machine": machine(), "commit": git_commit(),
             "command": f"`python bench/serve/rerank_throughput.py {shlex.join(argv)}`"}
    blocks, failed = [], False
    for config in (args.config or [None]) if args.start else [None]:
        model, rows = run_config(args, config)
        failed |= any(r["failed"] for r in rows)
        label = f" ({config})" if config else ""
        blocks.append(f"- **served model**: {model}{label}\n\n{table(rows)}")
        print(json.dumps(rows), file=sys.stderr)
    block = "\n".join([f"- **{k}**: {v}" for k, v in facts.items()]) + "\n\n" + "\n\n".join(blocks)
    print("\n" + block)
    if args.write:
        write_doc(args.write, block)
    return 1 if failed else 0


def run_config(args, config: Path | None) -> tuple[str, list[dict]]:
    """Bench the app at ``--url``, or (``--start``) one started from ``config`` and stopped."""
    started, url = None, args.url
    if args.start:
        from qrhead_vllm.serve.builder import DEFAULT_CONFIG, load_config
        from qrhead_vllm.serve.launch import start_local
        from qrhead_vllm.serve.launch import free_port
        started = load_config({"config": str(config or DEFAULT_CONFIG), "http.port": free_port()})
        url = start_local(started)
    try:
        return asyncio.run(bench(url, args.clients, args.per_client, args.min_requests,
                                 args.docs))
    finally:
        if started is not None:
            from qrhead_vllm.serve.launch import stop_local
            stop_local()


if __name__ == "__main__":
    sys.exit(main())
