"""A worker node holding a replica killed while serving (issues 20, 27): requests through the
other node's proxy, before, during and after the fault.

    python bench/serve/cluster_faults.py                       # node B holds the generator
    python bench/serve/cluster_faults.py --kill retriever      # node B holds the retriever
    python bench/serve/cluster_faults.py --json out.json       # and keep the raw figures

A two-node Ray cluster on this machine (bench/serve/local_cluster.py) runs
configs/serve/cluster-cpu.yaml, a proxy and an ingress replica on each node. ``--kill`` names
the engine on node B, the node that dies (node A, the head, holds the GCS and Serve's
controller): ``generator`` is the config as shipped (the retriever on A, the generator on B),
``retriever`` swaps the two engines' node pins (:func:`fault_config`). Open-loop streams
through node A's proxy: reranks (served by the retriever) and short chats (served by the
generator). After ``--before`` seconds every process of node B gets SIGKILL at once; unless
``--no-replace``, a fresh node with B's resources joins right away (what an autoscaler does),
so Serve can reschedule B's engine and ingress replica.

The client does what the openai and cohere SDKs do by default: a 503 (or 429) is retried at
most twice, after the ``Retry-After`` the server sent. Per stream: requests sent, 503 answers
(all attempts; in brackets, first attempts), requests lost (no 200 after the retries; by final
status), when the stream was served again (from the kill to the first 200 answered to a request
sent after it), when it was whole again (from the kill to the send time of the first request
after which every first attempt succeeded) and p50/p99 latency (retries included) before the
kill and after it. A response body that names a Ray class (ActorDiedError, ...) is counted too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))   # `python bench/serve/cluster_faults.py`

from bench.report import git_commit, machine, now, percentile  # noqa: E402
from qrhead_vllm import configs  # noqa: E402

CONFIG = configs.path("serve", "cluster-cpu.yaml")
EVAL = ROOT / "tests" / "data" / "hotpotqa-eval-10.jsonl"
RAY_NAMES = ("ActorDiedError", "RayActorError", "RayTaskError", "ActorUnavailableError",
             "ray.exceptions", "RaySystemError")


RETRIED = (429, 503)          # what the server marks as "try again" (with Retry-After)
MAX_RETRIES = 2                 # the openai and cohere SDKs' default
KILLED = "node_b"               # the worker node; node_a is the head (GCS, Serve controller)
# --kill: which engine is pinned to which node (the killed one holds the engine named).
PLACEMENTS = {"generator": {"retriever": "node_a", "generator": "node_b"},
              "retriever": {"retriever": "node_b", "generator": "node_a"}}


@dataclass
class Sent:
    t: float                    # send time, seconds after the stream began
    status: int                 # the last attempt's; 0: no HTTP answer (connection, timeout)
    latency: float              # to the last answer, retries and their waits included
    first_status: int
    unavailable: int = 0        # 503 answers, retries included
    ray_internals: bool = False


@dataclass
class Stream:
    name: str
    path: str
    bodies: list[dict]
    rate: float                 # requests per second, open loop
    sent: list[Sent] = field(default_factory=list)


def fault_config(kill: str, replica_wait_s: float | None = None):
    """cluster-cpu.yaml's app, bound to loopback without keys, with the ``kill`` engine pinned
    to the node that dies and the other engine to node A (and ``http.replica_wait_s`` if
    given)."""
    from qrhead_vllm.serve.args import QRHeadServeConfig

    wait = {"http.replica_wait_s": replica_wait_s} if replica_wait_s else {}
    cfg = QRHeadServeConfig.from_yaml(CONFIG, **{"http.host": "127.0.0.1",
                                                 "http.api_key_file": None, **wait})
    for role, node in PLACEMENTS[kill].items():
        deployment = getattr(cfg, role).deployment      # replaced, not merged: one node each
        deployment.ray_actor_options = {**deployment.ray_actor_options,
                                        "resources": {node: 0.01}}
    return cfg


def node_letter(node: str) -> str:
    return node.removeprefix("node_").upper()


def streams(rate: float, chat_rate: float, docs_per_request: int,
            placement: dict[str, str]) -> list[Stream]:
    docs = [{"query": ex["question"], "top_n": 3, "return_documents": False,
             "documents": [{"title": d["title"], "text": d["text"]}
                           for d in ex["documents"][:docs_per_request]]}
            for ex in map(json.loads, EVAL.read_text().splitlines())]
    chat = [{"model": "smollm2-135m", "max_tokens": 8, "temperature": 0,
             "messages": [{"role": "user", "content": f"Name a colour. ({i})"}]}
            for i in range(16)]
    on = {role: node_letter(node) for role, node in placement.items()}
    return [Stream(f"rerank (retriever on {on['retriever']})", "/v1/rerank", docs, rate),
            Stream(f"chat (generator on {on['generator']})", "/v1/chat/completions", chat,
                   chat_rate)]


async def attempt(http: httpx.AsyncClient, path: str, body: dict) -> tuple[int, str, float]:
    """(status, body, Retry-After in seconds or 0) of one POST."""
    try:
        r = await http.post(path, json=body)
    except httpx.HTTPError as e:
        return 0, repr(e), 0.0
    return r.status_code, r.text, float(r.headers.get("retry-after", 0) or 0)


async def one(http: httpx.AsyncClient, s: Stream, body: dict, t0: float) -> None:
    start = time.monotonic()
    status, text, wait = first = await attempt(http, s.path, body)
    ray_internals = status != 200 and any(n in text for n in RAY_NAMES)
    unavailable = status == 503
    for _ in range(MAX_RETRIES):
        if status not in RETRIED:
            break
        await asyncio.sleep(min(wait, 60) or 1)
        status, text, wait = await attempt(http, s.path, body)
        ray_internals |= status != 200 and any(n in text for n in RAY_NAMES)
        unavailable += status == 503
    s.sent.append(Sent(start - t0, status, time.monotonic() - start, first[0], unavailable,
                       ray_internals))


async def drive(url: str, ss: list[Stream], duration: float, t0: float,
                timeout: float) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=timeout) as http:
        tasks = []

        async def pace(s: Stream) -> None:
            i = 0
            while time.monotonic() - t0 < duration:
                tasks.append(asyncio.create_task(one(http, s, s.bodies[i % len(s.bodies)], t0)))
                i += 1
                await asyncio.sleep(1 / s.rate)

        await asyncio.gather(*(pace(s) for s in ss))
        await asyncio.gather(*tasks)


def pct(xs: list[float], q: float) -> float | None:
    return percentile(sorted(xs), q) if xs else None      # None: printed as "never"


def summary(s: Stream, t_kill: float) -> dict:
    sent = sorted(s.sent, key=lambda x: x.t)
    lost = [x for x in sent if x.status != 200]
    after = [x for x in sent if x.t >= t_kill]
    last_bad = max((x.t for x in after if x.first_status != 200), default=None)
    recovered = [x.t for x in after if last_bad is not None and x.t > last_bad]
    if last_bad is None:
        recovery = 0.0
    elif recovered:
        recovery = recovered[0] - t_kill
    else:
        recovery = None                           # never recovered within the run
    served = [x.t + x.latency for x in after if x.status == 200]
    codes: dict[str, int] = {}
    for x in lost:
        codes[str(x.status or "no answer")] = codes.get(str(x.status or "no answer"), 0) + 1
    ok_lat = lambda xs: [x.latency for x in xs if x.status == 200]  # noqa: E731
    before = [x for x in sent if x.t < t_kill]
    return {"stream": s.name, "sent": len(sent), "lost": len(lost), "codes": codes,
            "first_503": sum(x.first_status == 503 for x in sent),
            "all_503": sum(x.unavailable for x in sent),
            "served_again_s": min(served) - t_kill if served else None,
            "ray_internals": sum(x.ray_internals for x in sent), "recovery_s": recovery,
            "p50_before": pct(ok_lat(before), 0.5), "p99_before": pct(ok_lat(before), 0.99),
            "p50_after": pct(ok_lat(after), 0.5), "p99_after": pct(ok_lat(after), 0.99)}


def fmt(x: float | None, unit: str = " s") -> str:
    return "never" if x is None else f"{x:.1f}{unit}"


def table(rows: list[dict]) -> str:
    lines = ["| stream (through node A's proxy) | sent | 503s (first attempts) | lost (status: n) "
             "| bodies naming Ray | served again after the kill | whole again after the kill "
             "| p50 / p99 before | p50 / p99 after |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        codes = ", ".join(f"{k}: {v}" for k, v in sorted(r["codes"].items())) or "-"
        lines.append(f"| {r['stream']} | {r['sent']} | {r['all_503']} ({r['first_503']}) | "
                     f"{r['lost']} ({codes}) | {r['ray_internals']} | "
                     f"{fmt(r['served_again_s'])} | {fmt(r['recovery_s'])} | "
                     f"{fmt(r['p50_before'])} / {fmt(r['p99_before'])} | "
                     f"{fmt(r['p50_after'])} / {fmt(r['p99_after'])} |")
    return "\n".join(lines)


def run(args) -> tuple[list[dict], dict]:
    from bench.serve.local_cluster import deployed

    cfg = fault_config(args.kill, args.replica_wait_s)
    with deployed(cfg) as (cluster, urls, deploy_s):
        url = urls["node_a"]
        ss = streams(args.rate, args.chat_rate, args.docs, PLACEMENTS[args.kill])
        for s in ss:                                   # first-request costs out
            httpx.post(url + s.path, json=s.bodies[0], timeout=600).raise_for_status()
        events: dict[str, float] = {}
        t0 = time.monotonic()
        killed = cluster.nodes[KILLED].spec

        def fault() -> None:
            time.sleep(args.before)
            events["kill"] = time.monotonic() - t0
            cluster.kill_node(KILLED)
            if args.replace:
                cluster.start_node(killed)
                events["replacement_joined"] = time.monotonic() - t0

        killer = threading.Thread(target=fault)
        killer.start()
        asyncio.run(drive(url, ss, args.before + args.after, t0, args.timeout))
        killer.join()
        return [summary(s, events["kill"]) for s in ss], {
            "deploy_s": deploy_s, "replica_wait_s": cfg.http.replica_wait_s, **events}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--kill", choices=sorted(PLACEMENTS), default="generator",
                   help="the engine on node B, the node that is killed (the other one runs "
                        "on node A)")
    p.add_argument("--rate", type=float, default=2, help="reranks per second")
    p.add_argument("--chat-rate", type=float, default=0.5, help="chats per second")
    p.add_argument("--docs", type=int, default=10, help="HotpotQA passages per rerank (max 10)")
    p.add_argument("--before", type=float, default=20, help="seconds of traffic before the kill")
    p.add_argument("--after", type=float, default=150, help="seconds of traffic after it")
    p.add_argument("--timeout", type=float, default=120, help="client timeout per request")
    p.add_argument("--replica-wait-s", type=float,
                   help="the app's http.replica_wait_s (default: the config's): how long a "
                        "request waits for an engine replica before a 503")
    p.add_argument("--no-replace", dest="replace", action="store_false",
                   help="no replacement node: B's replicas stay down")
    p.add_argument("--note", default="", help="a label for the figures (e.g. the box's load)")
    p.add_argument("--json", type=Path, help="also write the rows and events as JSON here")
    args = p.parse_args(argv)
    rows, facts = run(args)
    head = (f"- date: {now()}; machine: {machine()}; commit: {git_commit()}\n"
            f"- command: `python bench/serve/cluster_faults.py {shlex.join(argv)}`\n"
            f"- node B (the {args.kill}, an ingress replica, a proxy) killed (SIGKILL, all its "
            f"processes) at {facts['kill']:.1f} s"
            + (f"; replacement node joined at {facts['replacement_joined']:.1f} s"
               if "replacement_joined" in facts else "; no replacement node")
            + f"; app deployed in {facts['deploy_s']:.0f} s"
            + f"; http.replica_wait_s {facts['replica_wait_s']:g} s"
            + (f"\n- {args.note}" if args.note else ""))
    block = f"{head}\n\n{table(rows)}"
    print(block)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "events": facts, "head": head}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
