"""Start and stop the app on a local Ray cluster (``qrhead serve``, the tests, the bench).

On a shared 2-core box: ``ray.init(num_cpus=2)`` and the default config reserves 1 CPU for the
engine replica and 0 for the ingress, so the app fits; vLLM's compute threads are pinned by
``VLLM_CPU_OMP_THREADS_BIND`` independently of Ray's logical CPU count.

Stopping stops only what starting started: a cluster :func:`start_local` started goes down
whole (Serve, every replica, Ray); on a cluster it joined (``--address``), other people's Serve
applications may run, so only our application is deleted and the cluster keeps running
(``serve.shutdown()`` would remove every application on it).
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass

from qrhead_vllm import envs
from qrhead_vllm.ray_cluster import init_ray
from qrhead_vllm.serve.args import QRHeadServeConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Started:
    """What :func:`connect` started in this process, so :func:`stop_local` stops that."""

    app_name: str
    owns_cluster: bool      # it started the Ray cluster (else it joined one others may use)


_started: Started | None = None


def free_port() -> int:
    """A TCP port nobody listens on now (tests and benches run beside other apps)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_url(cfg: QRHeadServeConfig) -> str:
    host = "127.0.0.1" if cfg.http.host in ("0.0.0.0", "::") else cfg.http.host
    return f"http://{host}:{cfg.http.port}{cfg.http.route_prefix.rstrip('/')}"


def start_local(cfg: QRHeadServeConfig, num_cpus: int | None = None,
                address: str | None = None, timeout_s: float = 900) -> str:
    """Start (or join) Ray, deploy the app, wait until it answers; returns its base URL."""
    from ray import serve

    from qrhead_vllm.serve.builder import build_qrhead_app

    connect(cfg, num_cpus, address)
    serve.run(build_qrhead_app(cfg), name=cfg.app_name, route_prefix=cfg.http.route_prefix,
              logging_config=serve_logging_config(), blocking=False)
    url = app_url(cfg)
    wait_healthy(url, timeout_s)
    return url


def serve_logging_config() -> dict | None:
    """The replicas' Serve log level: QRHEAD_LOG_LEVEL (set by ``--log-level``), else Serve's
    default. Serve's handlers drop records under their level, so ours at DEBUG needs it too."""
    level = envs.log_level()
    return {"log_level": level} if level else None


def connect(cfg: QRHeadServeConfig, num_cpus: int | None = None,
            address: str | None = None) -> None:
    """Start (no address: a fresh local cluster) or join Ray, and start Serve's HTTP proxy;
    remembers which, for :func:`stop_local`."""
    from ray import serve

    global _started
    _started = Started(cfg.app_name, owns_cluster=init_ray(address, num_cpus))
    serve.start(http_options={"host": cfg.http.host, "port": cfg.http.port})


def wait_healthy(url: str, timeout_s: float) -> None:
    """Poll ``/health`` until it answers 200 (serve.run already waited for the replicas)."""
    import httpx
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=10).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the app at {url} did not become healthy in {timeout_s:.0f} s")
        time.sleep(1)


def stop_local() -> None:
    """Stop what :func:`start_local` started (module docstring): on its own cluster, Serve and
    Ray; on a joined cluster, our application only (its replicas shut their engines down),
    then disconnect."""
    global _started
    import ray
    from ray import serve

    started, _started = _started, None
    if not ray.is_initialized():    # never connected (e.g. an unreachable --address): serve
        return                      # .shutdown() would auto-connect to the last recorded cluster
    try:
        if started is not None and started.owns_cluster:
            serve.shutdown()
        elif started is not None:
            serve.delete(started.app_name)
            logger.info("deleted the Serve application %r; the cluster and its other "
                        "applications keep running", started.app_name)
    finally:
        ray.shutdown()
