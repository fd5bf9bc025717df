"""Stop only what we started (issue 27): on a Ray cluster someone else runs, stopping
``qrhead serve --address`` deletes our Serve application and leaves the cluster and every other
application running; on the cluster it started itself, stopping takes the whole cluster down.

The shared cluster is a real ``ray start --head`` (bench/serve/local_cluster.py) with a tiny
second Serve application that must still answer after ours stopped. Ours is the real CLI with
the bundled SmolLM2 (the one engine start of this module), stopped with Ctrl-C (SIGINT).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from bench.serve.local_cluster import LocalCluster, NodeSpec

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

OTHER_APP = """
import sys
import ray
from ray import serve

@serve.deployment(ray_actor_options={"num_cpus": 0})
class Other:
    async def __call__(self, request):
        return "other app ok"

ray.init(address=sys.argv[1])
serve.start(http_options={"host": "127.0.0.1", "port": int(sys.argv[2])})
serve.run(Other.bind(), name="other", route_prefix="/other")
"""

APPLICATIONS = """
import sys
import ray
from ray import serve
ray.init(address=sys.argv[1])
print("APPS", *sorted(serve.status().applications))
"""


def run_in(cluster: LocalCluster, script: str, *args: str) -> str:
    """A Python script run as a separate driver of ``cluster``; its stdout."""
    out = subprocess.run([sys.executable, "-c", script, cluster.address, *args],
                         env={**os.environ, **cluster.env}, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def applications(cluster: LocalCluster) -> list[str]:
    line = [x for x in run_in(cluster, APPLICATIONS).splitlines() if x.startswith("APPS")]
    return line[0].split()[1:]


def default_sigint() -> None:
    """Ctrl-C's default in the child: a suite started in the background by a non-interactive
    shell ignores SIGINT, children inherit that, and Python then installs no KeyboardInterrupt
    (the first suite run here waited 300 s on a qrhead serve that never saw the signal)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_until_healthy(url: str, proc: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"qrhead serve exited {proc.returncode}:\n" \
                                    f"{log.read_text()[-4000:]}"
        try:
            if httpx.get(f"{url}/health", timeout=10).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise TimeoutError(f"qrhead serve did not answer at {url}:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def shared_cluster():
    """A cluster someone else started (2 CPUs: our engine reserves 1), running their app."""
    with LocalCluster([NodeSpec("node_a", num_cpus=2)]) as cluster:
        run_in(cluster, OTHER_APP, str(cluster.http_port))
        yield cluster


def test_stopping_our_app_on_a_joined_cluster_leaves_the_others_running(shared_cluster,
                                                                        tmp_path):
    cluster, url = shared_cluster, f"http://127.0.0.1:{shared_cluster.http_port}"
    assert httpx.get(f"{url}/other", timeout=30).text == "other app ok"
    log = tmp_path / "qrhead-serve.log"
    env = {k: v for k, v in {**os.environ, **cluster.env}.items() if k != "QRHEAD_API_KEY"}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "qrhead_vllm.cli", "serve", "--address", cluster.address,
             "--port", str(cluster.http_port), "--max-model-len", "512"],
            env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=default_sigint)
    try:
        wait_until_healthy(url, proc, log, timeout_s=900)
        assert sorted(applications(cluster)) == ["other", "qrhead"]
        proc.send_signal(signal.SIGINT)                 # Ctrl-C
        assert proc.wait(timeout=300) == 0, log.read_text()[-4000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert applications(cluster) == ["other"], log.read_text()[-4000:]
    other = httpx.get(f"{url}/other", timeout=30)
    assert (other.status_code, other.text) == (200, "other app ok")
    assert httpx.get(f"{url}/health", timeout=30).status_code == 404    # ours is gone
    assert "node_a" in cluster.alive_nodes()


STARTED_CLUSTER = """
import sys
import httpx
import ray
from ray import serve
from qrhead_vllm.ray_cluster import ClusterUnreachableError, wait_reachable
from qrhead_vllm.serve import launch
from qrhead_vllm.serve.args import QRHeadServeConfig

@serve.deployment(ray_actor_options={"num_cpus": 0})
class Tiny:
    async def __call__(self, request):
        return "ok"

cfg = QRHeadServeConfig(http={"port": int(sys.argv[1])})
launch.connect(cfg, num_cpus=1)                 # no address: a cluster of our own
serve.run(Tiny.bind(), name=cfg.app_name, route_prefix="/")
assert httpx.get(f"http://127.0.0.1:{sys.argv[1]}/", timeout=30).text == "ok"
gcs = ray.get_runtime_context().gcs_address
launch.stop_local()
try:
    wait_reachable(gcs, timeout_s=5)
    print("CLUSTER STILL UP", gcs)
except ClusterUnreachableError:
    print("CLUSTER DOWN", gcs)
"""


def test_stopping_on_the_cluster_we_started_stops_the_cluster():
    from qrhead_vllm.serve.launch import free_port

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="qrh-ray-") as tmp:  # short: sockets
        env["RAY_TMPDIR"] = tmp
        out = subprocess.run([sys.executable, "-c", STARTED_CLUSTER, str(free_port())],
                             env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "CLUSTER DOWN" in out.stdout, out.stdout + out.stderr[-3000:]
