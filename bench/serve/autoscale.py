"""Autoscaling on a two-node Ray cluster (issue 20): under load Serve starts a second retriever
replica on the other node, and the requests spread over both.

    python bench/serve/autoscale.py                      # print the table
    python bench/serve/autoscale.py --json out.json      # and keep the raw figures

A two-node Ray cluster on this machine (bench/serve/local_cluster.py, one CPU per node) runs
configs/serve/cluster-cpu.yaml with four changes: no separate generator (the retriever's
engine answers chat too, as in configs/serve/cpu.yaml), a 4096-token window (10 HotpotQA
passages reach 3.2K tokens), the retriever unpinned and at most one replica per node, and an
``autoscaling_config`` of 1 to 2 replicas (:data:`AUTOSCALING`).
``--clients`` closed-loop clients send reranks through node A's proxy. Sampled every second:
the retriever's live replicas and their nodes. Reported: when the second replica was started
and when it first served, requests/s before and after it served, every status code, and the
reranks each replica answered (Serve's per-replica access log).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))   # `python bench/serve/autoscale.py`

from bench.report import git_commit, machine, now  # noqa: E402
from bench.serve.replicas import replicas, served_calls  # noqa: E402
from bench.serve.rerank_throughput import workload  # noqa: E402
from qrhead_vllm import configs  # noqa: E402

CONFIG = configs.path("serve", "cluster-cpu.yaml")
# Scale up after 2 s over target (Serve's default waits 30 s), down only after the run.
AUTOSCALING = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2,
               "upscale_delay_s": 2, "downscale_delay_s": 600, "metrics_interval_s": 1,
               "look_back_period_s": 5}
DEPLOYMENT = "engine"     # serve/builder.py's name for one engine serving both roles


def autoscaled_config():
    """cluster-cpu.yaml's app with the retriever autoscaled over both nodes."""
    from qrhead_vllm.serve.args import QRHeadServeConfig

    cfg = QRHeadServeConfig.from_yaml(CONFIG, **{
        "http.host": "127.0.0.1", "http.api_key_file": None, "generator": None,
        "retriever.deployment.autoscaling_config": AUTOSCALING,
        "retriever.deployment.max_replicas_per_node": 1,
        "retriever.max_model_len": 4096})       # 10 HotpotQA passages reach 3.2K tokens
    cfg.retriever.deployment.ray_actor_options = {"num_cpus": 1}   # unpinned (overrides merge)
    return cfg


async def scale_up(cluster, url: str, clients: int, docs: int, settle_s: float,
                   timeout_s: float) -> dict:
    """Load the app until a second retriever replica has served, then ``settle_s`` more."""
    events: dict[str, float] = {}
    results: list[tuple[int, float]] = []          # (status, completion time)
    errors: list[str] = []                         # the first failures' bodies
    placements: list[tuple[float, list[str]]] = []
    t0 = time.monotonic()
    stop = asyncio.Event()

    async def client(http: httpx.AsyncClient, requests: list[dict]) -> None:
        for body in requests:
            if stop.is_set():
                return
            try:
                r = await http.post("/v1/rerank", json=body)
                status = r.status_code
                if status != 200 and len(errors) < 3:
                    errors.append(f"{status}: {r.text[:300]}")
            except httpx.HTTPError as e:
                status = 0
                if len(errors) < 3:
                    errors.append(repr(e))
            results.append((status, time.monotonic() - t0))

    async def watch() -> None:
        while not stop.is_set():
            now_s = time.monotonic() - t0
            live = await asyncio.to_thread(replicas, cluster, DEPLOYMENT)
            placements.append((now_s, sorted(live.values())))
            if len(live) > 1 and "second_started" not in events:
                events["second_started"] = now_s
            served = served_calls(cluster, DEPLOYMENT, "rerank", live)
            if "second_started" in events and sum(n > 0 for n in served.values()) > 1:
                events.setdefault("second_served", now_s)
            done_at = events.get("second_served", float("inf")) + settle_s
            if now_s > min(done_at, timeout_s):
                stop.set()
            await asyncio.sleep(1)

    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        work = workload(4000, docs)                   # more than a 600 s run sends
        await asyncio.gather(watch(), *(client(http, work[i::clients])
                                        for i in range(clients)))
    return {"events": events, "statuses": dict(Counter(s for s, _ in results)), "errors": errors,
            "rates": rates(results, events.get("second_served")),
            "served": served_calls(cluster, DEPLOYMENT, "rerank"),
            "placements": placements[-1][1] if placements else []}


def rates(results: list[tuple[int, float]], split: float | None) -> dict[str, float]:
    """OK reranks per second before and after the second replica first served."""
    ok = sorted(t for s, t in results if s == 200)
    if not ok or split is None:
        return {"before": len(ok) / max(ok[-1] if ok else 1, 1e-9), "after": float("nan")}
    before = [t for t in ok if t < split]
    after = [t for t in ok if t >= split]
    return {"before": len(before) / split,
            "after": len(after) / max(ok[-1] - split, 1e-9) if after else float("nan")}


def table(out: dict) -> str:
    ev, r = out["events"], out["rates"]
    fmt = lambda k: f"{ev[k]:.0f} s" if k in ev else "never"  # noqa: E731
    served = ", ".join(f"{n}" for n in sorted(out["served"].values(), reverse=True))
    codes = ", ".join(f"{k}: {v}" for k, v in sorted(out["statuses"].items()))
    return ("| clients | 2nd replica started | 2nd replica first served | OK req/s, 1 replica "
            "| OK req/s, 2 replicas | reranks per replica | replica nodes | status codes |\n"
            "|---:|---:|---:|---:|---:|---|---|---|\n"
            f"| {out['clients']} | {fmt('second_started')} | {fmt('second_served')} | "
            f"{r['before']:.2f} | {r['after']:.2f} | {served} | "
            f"{', '.join(out['placements'])} | {codes} |")


def run(args) -> dict:
    from bench.serve.local_cluster import deployed

    with deployed(autoscaled_config()) as (cluster, urls, deploy_s):
        url = urls["node_a"]
        httpx.post(url + "/v1/rerank", json=workload(1, args.docs)[0],
                   timeout=600).raise_for_status()                  # first-request costs out
        out = asyncio.run(scale_up(cluster, url, args.clients, args.docs, args.settle,
                                   args.timeout))
        return {**out, "clients": args.clients, "deploy_s": deploy_s}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=8, help="closed-loop rerank clients")
    p.add_argument("--docs", type=int, default=10, help="HotpotQA passages per rerank")
    p.add_argument("--settle", type=float, default=60,
                   help="seconds of load after the second replica first served")
    p.add_argument("--timeout", type=float, default=600, help="give up scaling after this")
    p.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = p.parse_args(argv)
    out = run(args)
    head = (f"- date: {now()}; machine: {machine()}; commit: {git_commit()}\n"
            f"- command: `python bench/serve/autoscale.py {shlex.join(argv)}`\n"
            f"- autoscaling_config: `{json.dumps(AUTOSCALING)}`; app deployed in "
            f"{out['deploy_s']:.0f} s; times from the start of the load")
    print(f"{head}\n\n{table(out)}")
    if args.json:
        args.json.write_text(json.dumps({**out, "head": head}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
