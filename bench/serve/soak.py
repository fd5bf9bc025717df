"""Soak bench (issue 27): a fixed, seeded mix of traffic at a steady rate for a long time, reported
per window: p50 / p99 per route, non-200 by code, RSS and open fds of every Ray and engine
process, Ray's object store use and the capture gauges.

    nice -n 15 python bench/serve/soak.py --start --duration-s 1800 --out docs/results/soak.md
    python bench/serve/soak.py --start --duration-s 180 --window-s 60 --check     # CI's version
    python bench/serve/soak.py --plain-vllm --duration-s 480 --window-s 120       # plugin off

Mix (seed 0, bench/serve/soak_mix.py): reranks of 5 to 100 short HotpotQA passages, chats of
16 tokens (unstreamed and streamed), ``/v1/answer`` over 5 to 10 passages, 5 % bad requests
that must get a 4xx. Every window carries the same load: the routes, arrivals, passage counts
and stream flags restart each window, while questions and passages are fresh draws (so a window
is never served from an earlier one's prefix cache); so the windows' p99s compare.
``--plain-vllm`` runs the same mix on vLLM's own OpenAI server with
``QRHEAD_ENABLED=0`` (the same engine arguments and thread binding as the app's engine): each
rerank and answer becomes the completion of a prompt with the same passages (``max_tokens`` 1
for a rerank), so the engine prefills about as much without our capture; a rerank's null pass
is not sent (its prefix is cached, it adds only the query span).

Rate (default): 70 % of what the CPU app served of this mix when saturated (0.48 requests/s;
``soak_mix.DEFAULT_RATE`` says where from). The load bench's 2.0-2.8 OK reranks/s are of 3
passages: a rerank here has 41 on average, and chats queue behind them in the one engine.

``--check`` exits 1 unless: no 5xx and no transport failure, every bad request got a 4xx, the
RSS of each engine process (engine replica, EngineCore, VLLM::Worker) grew at most
``--max-rss-growth`` from the end of the warm-up to the end and every other named process at
most ``--max-front-growth``, open fds at most ``--max-fd-growth``, and the capture gauges went
back to 0 once the last request was answered.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))   # `python bench/serve/soak.py`

from bench.report import git_commit, machine, now  # noqa: E402
from bench.serve.soak_mix import DEFAULT_RATE, Item, build_mix, send  # noqa: E402
from bench.serve.soak_report import (Bounds, Sample, check, markdown, sample,  # noqa: E402
                                     settled_gauges)


async def soak(url: str, items: list[Item], rate: float, duration_s: float, sample_s: float,
               headers: dict[str, str], sample_args: dict) -> tuple[list, list[Sample]]:
    """Send ``items`` at ``rate``/s (seeded exponential gaps) for ``duration_s``; every
    ``sample_s`` a :class:`Sample` of the processes. Returns (results, samples); a result is
    (route, expected, seconds after start it was sent, status, latency)."""
    results, samples, tasks = [], [], []
    start = time.monotonic()

    async def one(item: Item, sent: float) -> None:
        status, latency = await send(http, item)
        results.append((item.route, item.expect, sent, status, latency))

    async def sampler() -> None:
        while True:
            samples.append(await asyncio.to_thread(sample, time.monotonic() - start,
                                                   **sample_args))
            await asyncio.sleep(sample_s)

    async with httpx.AsyncClient(base_url=url, timeout=600, headers=headers,
                                 limits=httpx.Limits(max_connections=512)) as http:
        watcher = asyncio.create_task(sampler())
        for item in items:
            due = start + item.at / rate
            if due - start > duration_s:
                break
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            tasks.append(asyncio.create_task(one(item, time.monotonic() - start)))
        await asyncio.gather(*tasks)
        watcher.cancel()
        samples.append(await asyncio.to_thread(sample, time.monotonic() - start,
                                               **sample_args))
    return results, samples


def start_app(args) -> tuple[str, str, object]:
    """(url, served model name, stop) of the app or of plain vLLM, started here."""
    from qrhead_vllm.serve.args import QRHeadServeConfig
    from qrhead_vllm.serve.builder import DEFAULT_CONFIG
    from qrhead_vllm.serve.launch import free_port, start_local, stop_local

    cfg = QRHeadServeConfig.from_yaml(args.config or DEFAULT_CONFIG,
                                      **{"http.port": free_port()})
    if args.plain_vllm:
        from bench.serve.soak_plain import start_plain_vllm
        return start_plain_vllm(cfg)
    return start_local(cfg, num_cpus=2), cfg.retriever.model, stop_local


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    stop = None
    if args.start or args.plain_vllm:
        url, model, stop = start_app(args)
    else:
        from qrhead_vllm.ray_cluster import init_ray
        url, model = args.url, args.model
        init_ray("auto")                    # the object store and the processes' names
    try:
        out = run(args, url, model)
    finally:
        if stop is not None:
            stop()
    facts = {"date": now(), "machine": machine(), "commit": git_commit(),
             "command": f"`python bench/serve/soak.py {shlex.join(argv)}`",
             "rate": f"{out['rate']:.2f} requests/s" + (" (--rate)" if args.rate else
                                                         " (70 % of capacity, module docstring)"),
             "engine memory bounds": engine_memory_bounds()}
    report = markdown(facts, out["results"], out["samples"], args.window_s, args.warmup_s,
                      out["failures"])
    if args.out:
        Path(args.out).write_text(report)
    print(report)
    return 1 if args.check and out["failures"] else 0


def engine_memory_bounds() -> str:
    """The allocator settings the app's CPU engines ran with (the caller's values win over
    ours, ``engine_env.CPU_ENGINE_ENV``); GPU engines get none."""
    from qrhead_vllm.integration.engine_env import CPU_ENGINE_ENV, on_cpu
    if not on_cpu():
        return "none (GPU engines)"
    return ", ".join(f"{k}={os.environ.get(k, v)}" for k, v in CPU_ENGINE_ENV.items())


def run(args, url: str, model: str) -> dict:
    """The soak against a running app; its results, samples and the --check failures."""
    rate = args.rate or DEFAULT_RATE
    repeat_s = args.window_s if args.repeat_s is None else args.repeat_s
    items = build_mix(args.seed, model, plain=args.plain_vllm, data=args.data,
                      period=repeat_s * rate if repeat_s > 0 else None)
    headers = {"authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    results, samples = asyncio.run(soak(
        url, items, rate, args.duration_s, args.sample_s, headers,
        {"root_pid": args.root_pid or os.getpid(), "url": url, "headers": headers}))
    samples[-1].gauges = settled_gauges(url, headers, args.settle_s)
    failures = check(results, samples, args.warmup_s, Bounds(
        args.max_rss_growth, args.max_front_growth, args.max_fd_growth))
    return {"rate": rate, "results": results, "samples": samples, "failures": failures}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8000", help="base URL of a running app")
    p.add_argument("--start", action="store_true", help="start the CPU app here (free port)")
    p.add_argument("--plain-vllm", action="store_true", help="the same mix on plain vLLM "
                   "(QRHEAD_ENABLED=0), started here")
    p.add_argument("--config", help="serve config to start (default: configs/serve/cpu.yaml)")
    p.add_argument("--model", default="smollm2-135m", help="model name chats use (--url)")
    p.add_argument("--api-key", default=os.environ.get("QRHEAD_API_KEY"),
                   help="sent as Authorization: Bearer (default: QRHEAD_API_KEY)")
    p.add_argument("--root-pid", type=int, help="measure this process's descendants (default: "
                   "this process, which started Ray with --start)")
    p.add_argument("--duration-s", type=float, default=1800.0)
    p.add_argument("--window-s", type=float, default=300.0, help="report window")
    p.add_argument("--warmup-s", type=float, default=None, help="growth is measured from "
                   "here (default: one window)")
    p.add_argument("--repeat-s", type=float, default=None, help="the load's shape repeats with "
                   "this period (default: --window-s, so windows compare; 0: never)")
    p.add_argument("--sample-s", type=float, default=15.0, help="process sampling period")
    p.add_argument("--rate", type=float, help="requests/s (default: module docstring)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", help="HotpotQA JSONL (default: the shared file)")
    p.add_argument("--check", action="store_true", help="exit 1 unless the bounds hold")
    p.add_argument("--max-rss-growth", type=float, default=0.05,
                   help="fraction, per engine process (engine replica, EngineCore, Worker)")
    p.add_argument("--max-front-growth", type=float, default=0.25,
                   help="fraction, per other process: ingress and proxy hold the requests "
                        "queued in them (+20 %% and +8 %% in 2 min of an overloaded 3-min soak)")
    p.add_argument("--settle-s", type=float, default=60.0, help="wait this long at the end for "
                   "the capture gauges to read 0 (the replica refreshes them every 10 s)")
    p.add_argument("--max-fd-growth", type=int, default=8, help="open fds, per process")
    p.add_argument("--out", help="write the markdown report here too")
    args = p.parse_args(argv)
    if args.warmup_s is None:
        args.warmup_s = args.window_s
    return args


if __name__ == "__main__":
    sys.exit(main())
