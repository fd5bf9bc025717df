"""A real multi-node Ray cluster on one machine, for the tests and the bench (issue 20).

Each node is a ``ray start --block`` process in a session of its own (``--head`` first, then
``--address=<head>``), with its own CPUs, a custom resource named after the node
(``{"node_a": 1}``), a temp dir of its own and ports that clash neither with a default local
Ray nor with other clusters on the box. Why not ``ray stop``: it kills every Ray process of
the machine by name, other people's clusters included. A node here is stopped through its own
``ray start --block`` process, then SIGKILL to exactly the processes that descend from it.

Two Serve proxies on one host: every proxy binds ``http_options.port`` with SO_REUSEPORT, so
two nodes on one host would share the port and the kernel would pick a proxy per connection.
Ray Serve reads ``RAY_SERVE_WORKER_PROXY_HTTP_PORT`` in a worker node's proxy (the head is
exempt), so each worker node gets its own port through its raylet's environment:
``proxy_url(name)`` then reaches exactly that node's proxy.

Token authentication (Ray 2.60): ``ray start --head`` turns it on when a token exists
(``~/.ray/auth_token``, which a local ``ray.init()`` writes) and fails under
``RAY_AUTH_MODE=token`` when none does. The cluster makes a token of its own in its temp root
(``RAY_AUTH_TOKEN_PATH``), so it neither reads nor writes the home directory shared with other
clusters; every process that connects (the other nodes, the driver, ``ray status``, ``serve
deploy``) needs ``RAY_AUTH_MODE=token`` and that path: :attr:`LocalCluster.env` carries both.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))


# Ray's memory monitor reads the whole machine's memory: on a box shared with other clusters
# it kills our workers (the Serve controller first seen) for memory that others hold. The
# kernel's OOM killer still guards the machine.
NODE_ENV = {"RAY_memory_monitor_refresh_ms": "0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class NodeSpec:
    """One node: its name (also its custom resource) and logical CPUs."""

    name: str
    num_cpus: float = 1
    resources: dict[str, float] = field(default_factory=dict)

    def all_resources(self) -> dict[str, float]:
        return {self.name: 1, **self.resources}


@dataclass
class Node:
    spec: NodeSpec
    proc: subprocess.Popen
    temp_dir: Path
    http_port: int
    log: Path


class LocalCluster:
    """``with LocalCluster([NodeSpec("node_a"), NodeSpec("node_b")]) as c: ray.init(c.address)``.

    The first node is the head. ``http_port`` is the head proxy's port (put it in the Serve
    config's ``http_options.port``); worker nodes get ports of their own.
    """

    def __init__(self, nodes: list[NodeSpec], dashboard: bool = False,
                 env: dict[str, str] | None = None, start_timeout_s: float = 120):
        self.specs = list(nodes)
        self.dashboard = dashboard
        self.extra_env = dict(env or {})
        self.start_timeout_s = start_timeout_s
        self.root = Path(tempfile.mkdtemp(prefix="qrhc-", dir="/tmp"))  # short: socket paths
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.http_port = free_port()
        self.token_path = self.root / "auth_token"
        self.token_path.write_text(secrets.token_hex(32))   # 256 bits, as Ray's own
        self.token_path.chmod(0o600)
        self.nodes: dict[str, Node] = {}

    # --- addresses ------------------------------------------------------------------------
    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def env(self) -> dict[str, str]:
        """What a process joining this cluster needs in its environment."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path),
                "RAY_ADDRESS": self.address,
                "RAY_USAGE_STATS_ENABLED": "0", **self.extra_env}

    def proxy_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.nodes[name].http_port}"

    def node_pids(self, name: str) -> set[int]:
        """Processes of one node: its ``ray start`` and every descendant (GCS, raylet, Ray
        workers and actors, engines they spawned). Ray workers leave the session, so a
        process group alone would miss them."""
        return _descendants(self.nodes[name].proc.pid)

    # --- the driver -----------------------------------------------------------------------
    def connect(self, **init_kwargs) -> None:
        """``ray.init`` this process into the cluster. Ray caches its auth mode when first
        imported, so the variables are set and its config re-read before connecting."""
        import ray
        from ray._raylet import Config

        self._saved_env = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        Config.initialize("")
        _reset_token_cache()
        ray.init(address=self.address, **init_kwargs)

    def disconnect(self) -> None:
        """``ray.shutdown`` and put back the environment :meth:`connect` changed."""
        import ray
        from ray._raylet import Config

        ray.shutdown()
        for key, value in getattr(self, "_saved_env", {}).items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        Config.initialize("")
        _reset_token_cache()

    # --- lifecycle ------------------------------------------------------------------------
    def start(self) -> "LocalCluster":
        try:
            for spec in self.specs:
                self.start_node(spec)
        except BaseException:
            self.stop()
            raise
        return self

    def start_node(self, spec: NodeSpec) -> Node:
        """Start one node (the head if none runs yet) and wait until the cluster lists it."""
        head = not self.nodes
        temp_dir = self.root / f"{spec.name}-{int(time.time() * 1000) % 10**6}"
        temp_dir.mkdir()
        http_port = self.http_port if head else free_port()
        env = {**os.environ, **self.env, **NODE_ENV}
        env.pop("RAY_ADDRESS")           # `ray start` takes the address as a flag
        if not head:
            env["RAY_SERVE_WORKER_PROXY_HTTP_PORT"] = str(http_port)
        cmd = [RAY, "start", "--block", "--disable-usage-stats", f"--temp-dir={temp_dir}",
               "--node-ip-address=127.0.0.1", f"--num-cpus={spec.num_cpus}",
               f"--resources={_json(spec.all_resources())}",
               f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
               f"--dashboard-agent-listen-port={free_port()}",
               f"--dashboard-agent-grpc-port={free_port()}",
               f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
               "--min-worker-port=0", "--max-worker-port=0"]   # 0: ports the OS picks
        if head:
            cmd += ["--head", f"--port={self.gcs_port}",
                    f"--ray-client-server-port={free_port()}",
                    f"--include-dashboard={str(self.dashboard).lower()}",
                    f"--dashboard-port={self.dashboard_port}", "--dashboard-host=127.0.0.1"]
        else:
            cmd += [f"--address={self.address}"]
        log = self.root / f"{temp_dir.name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        node = self.nodes[spec.name] = Node(spec, proc, temp_dir, http_port, log)
        self._wait_alive(spec.name)
        return node

    def _wait_alive(self, name: str) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while name not in self.alive_nodes():
            node = self.nodes[name]
            if node.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Ray node {name} did not join {self.address} "
                                   f"(exit {node.proc.poll()}); log:\n{node.log.read_text()[-3000:]}")
            time.sleep(1)

    def alive_nodes(self) -> dict[str, str]:
        """``{node name: Ray node id}`` of the nodes the GCS reports alive (by our resource)."""
        out = subprocess.run([sys.executable, "-c", _ALIVE_SCRIPT, self.address],
                             env={**os.environ, **self.env}, capture_output=True, text=True,
                             timeout=60)
        if out.returncode != 0:
            return {}
        names = {s.name for s in self.specs}
        alive = {}
        for line in out.stdout.splitlines():
            node_id, *resources = line.split()
            alive.update({r: node_id for r in resources if r in names})
        return alive

    def kill_node(self, name: str) -> None:
        """SIGKILL every process of one node at once (a machine that dies)."""
        pids = self.node_pids(name)
        node = self.nodes.pop(name)
        _kill(pids)
        node.proc.wait(timeout=30)

    def stop_node(self, name: str, grace_s: float = 10) -> None:
        """Stop one node: SIGTERM to its ``ray start --block`` (which stops the node's
        processes), then SIGKILL whatever of it is left after ``grace_s``."""
        pids = self.node_pids(name)
        node = self.nodes.pop(name)
        node.proc.terminate()
        try:
            node.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        _kill(pids | _descendants(node.proc.pid))
        node.proc.wait(timeout=30)

    def stop(self) -> None:
        """Stop every node, workers first, the head last; remove the temp dirs."""
        for name in reversed(list(self.nodes)):
            self.stop_node(name)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def deploy(cluster: LocalCluster, cfg, proxy_location: str = "EveryNode",
           timeout_s: float = 900) -> dict[str, str]:
    """Deploy the app on the cluster (this process must be :meth:`LocalCluster.connect`-ed);
    returns ``{node name: base URL through that node's proxy}`` once every proxy answers."""
    from ray import serve

    from bench.serve.replicas import serve_state
    from qrhead_vllm.serve.builder import build_qrhead_app
    from qrhead_vllm.serve.launch import wait_healthy

    serve.start(proxy_location=proxy_location,
                http_options={"host": cfg.http.host, "port": cluster.http_port})
    serve.run(build_qrhead_app(cfg), name=cfg.app_name, route_prefix=cfg.http.route_prefix,
              blocking=False)
    prefix = cfg.http.route_prefix.rstrip("/")
    urls = {name: cluster.proxy_url(name) + prefix for name in cluster.nodes}
    deadline = time.monotonic() + timeout_s
    for name, url in urls.items():
        try:
            wait_healthy(url, max(1.0, deadline - time.monotonic()))
        except TimeoutError as e:       # say which proxy and what Serve thinks of it
            raise TimeoutError(f"{e}; node {name}'s proxy. {serve_state()}") from None
    return urls


@contextmanager
def deployed(cfg, nodes: tuple[str, ...] = ("node_a", "node_b")):
    """A cluster of one-CPU ``nodes`` with ``cfg``'s app deployed on it (this process
    connected): yields ``(cluster, {node name: base URL}, seconds the deploy took)``; Serve
    shut down and every node stopped on exit."""
    from ray import serve

    with LocalCluster([NodeSpec(name) for name in nodes]) as cluster:
        cluster.connect(log_to_driver=False)
        try:
            start = time.monotonic()
            urls = deploy(cluster, cfg)
            yield cluster, urls, time.monotonic() - start
        finally:
            serve.shutdown()
            cluster.disconnect()


_ALIVE_SCRIPT = """
import sys
from ray._raylet import GcsClient
from ray.core.generated import gcs_pb2
for n in GcsClient(address=sys.argv[1]).get_all_node_info(timeout=20).values():
    if n.state == gcs_pb2.GcsNodeInfo.GcsNodeState.ALIVE:
        print(n.node_id.hex(), *n.resources_total)
"""


def _reset_token_cache() -> None:
    from ray._raylet import AuthenticationTokenLoader
    AuthenticationTokenLoader.instance().reset_cache()


def _json(d: dict) -> str:
    import json
    return json.dumps(d)


def _descendants(pid: int) -> set[int]:
    import psutil

    try:
        root = psutil.Process(pid)
        return {pid} | {p.pid for p in root.children(recursive=True)}
    except psutil.Error:
        return set()


def _kill(pids: set[int]) -> None:
    """SIGKILL exactly these processes (never by name: other clusters share the machine)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
