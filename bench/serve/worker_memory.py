"""Why vLLM's CPU worker grows: plain vLLM, prompts of many lengths, one allocator setting per run.

The soak bench (bench/serve/soak.py) saw ``VLLM::Worker`` grow under mixed traffic with the
plugin on and off alike. Growth that "slows but does not stop" as new prompt lengths arrive
fits two suspects: glibc malloc keeping freed activation buffers of ever new sizes (its
dynamic mmap threshold moves large buffers onto the heap after the first free), and oneDNN's
primitive caches (vLLM's CPU linear layers keep 32 primitives per layer, keyed by token count).
This bench starts plain vLLM (the app engine's arguments, ``QRHEAD_ENABLED=0``) once per
variant, each from vLLM's own defaults (``both`` is what our engines start with since this
bench found it: qrhead_vllm/integration/engine_env.py), sends the same seeded prompts of random
lengths (random token ids: no prefix-cache hits, so every prefill's token count is the
prompt's), and samples the worker's RSS. Growth is measured against requests served, not time,
so the figures do not depend on the box's speed (the box was shared when they were taken).

    python bench/serve/worker_memory.py --requests 300 --out docs/results/worker_memory.md
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))   # `python bench/serve/worker_memory.py`

from bench.report import git_commit, machine, now  # noqa: E402

VARIANTS = {        # each starts from vLLM's own defaults: none of the settings below is set
    "none": {},
    "MALLOC_ARENA_MAX=2": {"MALLOC_ARENA_MAX": "2"},
    "MALLOC_MMAP_THRESHOLD_=65536": {"MALLOC_MMAP_THRESHOLD_": "65536"},
    "ONEDNN_PRIMITIVE_CACHE_CAPACITY=64": {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "64"},
    "both": {"MALLOC_MMAP_THRESHOLD_": "65536", "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "64"},
}
SETTINGS = {name for env in VARIANTS.values() for name in env}
MB = 1024 * 1024


def worker_rss_mb(root_pid: int) -> float:
    """Summed RSS of the ``VLLM::Worker`` processes under ``root_pid``."""
    import psutil

    total = 0.0
    for proc in psutil.Process(root_pid).children(recursive=True):
        try:
            if "VLLM::Worker" in " ".join(proc.cmdline()) or proc.name() == "VLLM::Worker":
                total += proc.memory_info().rss / MB
        except psutil.Error:
            continue
    return total


def prompts(n: int, max_len: int, vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(100, vocab) for _ in range(rng.randint(8, max_len))]
            for _ in range(n)]


def start(cfg, env_extra: dict[str, str]) -> tuple[str, subprocess.Popen]:
    from bench.serve.soak_plain import plain_vllm_command
    from qrhead_vllm.serve.launch import free_port, wait_healthy

    port = free_port()
    argv, env = plain_vllm_command(cfg, port)
    env = {k: v for k, v in env.items() if k not in SETTINGS}   # not the engines' defaults
    proc = subprocess.Popen(argv, env={**env, **env_extra}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, 900)
    return url, proc


def run_variant(cfg, env_extra: dict[str, str], batch: list[list[int]], every: int
                ) -> list[tuple[int, float]]:
    """(requests served, worker MB) samples of one variant."""
    import httpx

    url, proc = start(cfg, env_extra)
    samples = [(0, worker_rss_mb(proc.pid))]
    try:
        with httpx.Client(base_url=url, timeout=300) as client, ThreadPoolExecutor(2) as pool:
            def send(ids: list[int]) -> None:
                r = client.post("/v1/completions", json={
                    "model": cfg.retriever.model, "prompt": ids, "max_tokens": 4,
                    "temperature": 0})
                r.raise_for_status()

            for i in range(0, len(batch), every):
                list(pool.map(send, batch[i:i + every]))
                samples.append((min(i + every, len(batch)), worker_rss_mb(proc.pid)))
                print(f"  {samples[-1][0]:4d} requests: {samples[-1][1]:.0f} MB", flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    return samples


def table(results: dict[str, list[tuple[int, float]]], warmup: int) -> str:
    counts = [n for n, _ in next(iter(results.values()))]
    lines = ["| variant | " + " | ".join(f"{n}" for n in counts) + " | growth after "
             f"{warmup} requests |", "|---|" + "---:|" * (len(counts) + 1)]
    for name, samples in results.items():
        base = next(mb for n, mb in samples if n >= warmup)
        growth = (samples[-1][1] - base) / base * 100
        lines.append(f"| {name} | " + " | ".join(f"{mb:,.0f}" for _, mb in samples)
                     + f" | {growth:+.1f} % |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--every", type=int, default=50, help="sample RSS every N requests")
    p.add_argument("--warmup", type=int, default=100, help="growth is measured after N")
    p.add_argument("--max-len", type=int, default=3500, help="longest prompt, tokens")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variant", action="append", choices=list(VARIANTS),
                   help="run these (default: all)")
    p.add_argument("--config", help="serve config whose engine is used (default: cpu.yaml)")
    p.add_argument("--out")
    args = p.parse_args(argv)

    from qrhead_vllm.serve.args import QRHeadServeConfig
    from qrhead_vllm.serve.builder import DEFAULT_CONFIG

    cfg = QRHeadServeConfig.from_yaml(args.config or DEFAULT_CONFIG)
    batch = prompts(args.requests, args.max_len, 49000, args.seed)
    results, started = {}, time.time()
    for name in args.variant or list(VARIANTS):
        print(f"variant {name}", flush=True)
        results[name] = run_variant(cfg, VARIANTS[name], batch, args.every)
    report = "\n".join([
        f"- **date**: {now()}", f"- **machine**: {machine()}", f"- **commit**: {git_commit()}",
        f"- **command**: `python bench/serve/worker_memory.py {' '.join(argv)}`",
        f"- **engine**: plain vLLM (`QRHEAD_ENABLED=0`), {cfg.retriever.model}, dtype "
        f"{cfg.retriever.dtype}; {args.requests} prompts of 8 to {args.max_len} random tokens, "
        f"4 output tokens, 2 at a time; {time.time() - started:.0f} s in all", "",
        "VLLM::Worker RSS in MB after N requests:", "", table(results, args.warmup), ""])
    if args.out:
        Path(args.out).write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
