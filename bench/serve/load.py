"""Load and faults against the running Serve app (issue 20): the load curve at 1..64 closed-loop
clients (throughput, p50/p95/p99, every status code), and the replica-kill figure.

    qrhead serve &            # or any running app; --api-key if it asks for one
    nice -n 15 python bench/serve/load.py --url http://127.0.0.1:8000 --clients 1 4 16 64
    nice -n 15 python bench/serve/load.py --start --kill    # start, load, kill, stop

Workload: bench/rerank_throughput.py's (HotpotQA questions with their own passages, a fresh
tag per request so no prompt is served from the prefix cache). Load: each level is a fixed
number of requests drained by N closed-loop clients; over the engine's queue bound the app
answers 503 + Retry-After at once, counted, not retried. Kill: reranks sent at a fixed rate;
the engine replica's process (found in the GCS actor table: the bench must reach the
cluster, as it does with --start) gets SIGKILL after the first seconds. Reported: requests
sent, lost (any non-200), time from the kill until the first request sent after it succeeds,
p99 latency of the requests sent around the fault.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))   # `python bench/serve/load.py`

from bench.report import git_commit, machine, now, percentile  # noqa: E402
from bench.serve.rerank_throughput import workload  # noqa: E402


async def post(http: httpx.AsyncClient, body: dict) -> tuple[int, float, float]:
    """(status, send time, latency); a transport failure counts as status 0."""
    t0 = time.monotonic()
    try:
        status = (await http.post("/v1/rerank", json=body)).status_code
    except httpx.HTTPError:
        status = 0
    return status, t0, time.monotonic() - t0


async def load_level(http: httpx.AsyncClient, requests: list[dict], clients: int) -> dict:
    """``clients`` closed-loop clients drain ``requests``; statuses and latencies of each."""
    queue: asyncio.Queue = asyncio.Queue()
    for r in requests:
        queue.put_nowait(r)
    results = []

    async def client():
        while not queue.empty():
            results.append(await post(http, queue.get_nowait()))

    t0 = time.monotonic()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.monotonic() - t0
    ok = sorted(lat for status, _, lat in results if status == 200)
    return {"clients": clients, "requests": len(results), "ok_req_s": len(ok) / wall,
            "p50_s": percentile(ok, 0.50), "p95_s": percentile(ok, 0.95),
            "p99_s": percentile(ok, 0.99),
            # a 503 over the queue bound should come at once, not after a wait
            "slowest_503_s": max((lat for s, _, lat in results if s == 503), default=None),
            "statuses": dict(sorted(Counter(s for s, _, _ in results).items()))}


async def kill_run(http: httpx.AsyncClient, requests: list[dict], rate: float,
                   kill_after_s: float, kill) -> dict:
    """Send ``requests`` at ``rate``/s, ``kill()`` the replica after ``kill_after_s``."""
    tasks, t_kill, start = [], None, time.monotonic()
    for body in requests:
        tasks.append(asyncio.create_task(post(http, body)))
        if t_kill is None and time.monotonic() - start >= kill_after_s:
            await asyncio.sleep(0.2)            # the last request is inside the engine
            t_kill = time.monotonic()
            kill()
        await asyncio.sleep(1 / rate)
    results = await asyncio.gather(*tasks)
    after = sorted((sent + lat, sent) for status, sent, lat in results
                   if status == 200 and sent >= t_kill)
    lat = sorted(lat for _, _, lat in results)
    return {"sent": len(results), "lost": sum(s != 200 for s, _, _ in results),
            "statuses": dict(sorted(Counter(s for s, _, _ in results).items())),
            "recovery_s": after[0][0] - t_kill if after else float("nan"),
            "p99_s": percentile(lat, 0.99), "max_s": lat[-1]}


ORPHANS: list = []      # the killed replica's engine processes, reaped when the bench ends


def kill_engine_replica(app_name: str) -> int:
    """SIGKILL the (first) engine replica's process; returns its pid."""
    import psutil

    from bench.serve.replicas import engine_replica_pids
    pid = engine_replica_pids(app_name)[0]
    ORPHANS.extend(psutil.Process(pid).children(recursive=True))
    os.kill(pid, signal.SIGKILL)
    return pid


def load_table(rows: list[dict]) -> str:
    lines = ["| clients | requests | OK requests/s | p50 | p95 | p99 | status codes "
             "| slowest 503 |", "|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        codes = ", ".join(f"{k}: {v}" for k, v in r["statuses"].items())
        slowest = r.get("slowest_503_s")
        lines.append(f"| {r['clients']} | {r['requests']} | {r['ok_req_s']:.2f} | "
                     f"{r['p50_s']:.2f} s | {r['p95_s']:.2f} s | {r['p99_s']:.2f} s | {codes} | "
                     + ("-" if slowest is None else f"{slowest:.2f} s") + " |")
    return "\n".join(lines)


def kill_table(k: dict) -> str:
    codes = ", ".join(f"{c}: {n}" for c, n in k["statuses"].items())
    return ("| fault | requests sent | lost | recovery | p99 around the fault | status codes |\n"
            "|---|---:|---:|---:|---:|---|\n"
            f"| engine replica SIGKILLed during reranks | {k['sent']} | {k['lost']} | "
            f"{k['recovery_s']:.0f} s | {k['p99_s']:.1f} s | {codes} |")


async def bench(args, url: str, app_name: str) -> dict:
    headers = {"authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    out: dict = {}
    async with httpx.AsyncClient(base_url=url, timeout=900, headers=headers,
                                 limits=httpx.Limits(max_connections=256)) as http:
        await load_level(http, workload(2, args.docs), 1)          # warm-up, not reported
        out["load"] = []
        for clients in args.clients:
            n = max(args.min_requests, args.per_client * clients)
            out["load"].append(await load_level(http, workload(n, args.docs), clients))
            print(load_table(out["load"][-1:]).splitlines()[-1], flush=True)
        if args.kill:
            requests = workload(int(args.kill_rate * args.kill_duration_s), args.docs)
            out["kill"] = await kill_run(http, requests, args.kill_rate, args.kill_after_s,
                                         lambda: kill_engine_replica(app_name))
            print(kill_table(out["kill"]).splitlines()[-1], flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8000", help="base URL of the app")
    p.add_argument("--start", action="store_true", help="start the app (configs/serve/"
                   "cpu.yaml, free port), bench it, stop it")
    p.add_argument("--api-key", default=os.environ.get("QRHEAD_API_KEY"),
                   help="sent as Authorization: Bearer (default: QRHEAD_API_KEY)")
    p.add_argument("--app-name", default="qrhead", help="Serve application name (--kill)")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    p.add_argument("--per-client", type=int, default=2, help="requests per client per level")
    p.add_argument("--min-requests", type=int, default=8, help="at least this many per level")
    p.add_argument("--docs", type=int, default=10, help="documents per request (max 10)")
    p.add_argument("--kill", action="store_true", help="then the replica-kill run")
    p.add_argument("--kill-rate", type=float, default=2.0, help="reranks per second")
    p.add_argument("--kill-duration-s", type=float, default=60.0)
    p.add_argument("--kill-after-s", type=float, default=5.0)
    args = p.parse_args(argv)
    url, started = args.url, args.start
    if started:
        from qrhead_vllm.serve.launch import start_local
        from qrhead_vllm.serve.args import QRHeadServeConfig
        from qrhead_vllm.serve.builder import DEFAULT_CONFIG
        from qrhead_vllm.serve.launch import free_port
        cfg = QRHeadServeConfig.from_yaml(DEFAULT_CONFIG, **{"http.port": free_port()})
        url, args.app_name = start_local(cfg), cfg.app_name
    elif args.kill:
        from qrhead_vllm.ray_cluster import init_ray
        init_ray("auto")
    try:
        out = asyncio.run(bench(args, url, args.app_name))
    finally:
        if started:
            from qrhead_vllm.serve.launch import stop_local
            stop_local()
        for child in ORPHANS:
            if child.is_running():
                child.kill()
    facts = {"date": now(), "machine": machine(), "commit": git_commit(),
             "command": f"`python bench/serve/load.py {shlex.join(argv)}`"}
    print(json.dumps(out), file=sys.stderr)
    print("\n".join(f"- **{k}**: {v}" for k, v in facts.items()) + "\n\n"
          + load_table(out["load"]) + ("\n\n" + kill_table(out["kill"]) if "kill" in out
                                       else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
