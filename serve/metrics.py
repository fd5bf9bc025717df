"""``GET /metrics``: the cluster's Prometheus metrics in one response.

Ray's metrics agent on every node exports what that node's processes record through Ray:
Ray Serve's own metrics, vLLM's (our engines use vLLM's ``RayPrometheusStatLogger``, as Ray
Serve LLM does) and QRHead's (``qrhead_vllm.metrics``), each prefixed ``ray_``. This route reads
every live node's endpoint and returns them as one text exposition, so ``curl <app>/metrics``
shows all three; a Prometheus server can equally scrape the nodes' ports directly.
"""

from __future__ import annotations

import asyncio

import httpx

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def node_endpoints() -> list[str]:
    """The metrics URL of every live Ray node."""
    import ray
    return [f"http://{n['NodeManagerAddress']}:{n['MetricsExportPort']}/metrics"
            for n in ray.nodes() if n.get("Alive") and n.get("MetricsExportPort")]


def merge_expositions(texts: list[str]) -> str:
    """Concatenate text expositions, keeping each metric's HELP/TYPE lines once (samples of
    different nodes differ by their NodeAddress label)."""
    seen, lines = set(), []
    for text in texts:
        for line in text.splitlines():
            if line.startswith("#"):
                if line in seen:
                    continue
                seen.add(line)
            lines.append(line)
    return "\n".join(lines) + "\n"


async def cluster_metrics(timeout_s: float = 10) -> str:
    """Fetch and merge the metrics of every node (a node that does not answer is left out)."""
    urls = await asyncio.to_thread(node_endpoints)
    async with httpx.AsyncClient(timeout=timeout_s) as client:
        replies = await asyncio.gather(*(client.get(u) for u in urls), return_exceptions=True)
    return merge_expositions([r.text for r in replies
                              if isinstance(r, httpx.Response) and r.status_code == 200])
