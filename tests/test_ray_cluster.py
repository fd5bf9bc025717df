"""Starting Ray (qrhead_vllm/ray_cluster.py): without an address a fresh local cluster, never the
one Ray last recorded; an address that does not answer fails within a bound, naming it.

The recorded cluster lives in ``$RAY_TMPDIR/ray/ray_current_cluster`` (written by ``ray start``);
the tests point RAY_TMPDIR at a temp dir holding a record of a dead cluster, the state a
SIGKILLed ``ray start --head`` leaves behind. Each case runs in a child process: the test
process may already be connected to the suite's own Ray.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from qrhead_vllm.ray_cluster import ClusterUnreachableError, gcs_endpoint, wait_reachable
from qrhead_vllm.serve.launch import free_port


def test_gcs_endpoint_forms():
    assert gcs_endpoint("10.0.0.5:6379") == ("10.0.0.5", 6379)
    assert gcs_endpoint("ray://head:10001") == ("head", 10001)
    assert gcs_endpoint("[::1]:6379") == ("::1", 6379)
    with pytest.raises(ClusterUnreachableError, match="not host:port"):
        gcs_endpoint("head-without-port")


def test_closed_port_is_unreachable_and_named():
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(ClusterUnreachableError, match=address):
        wait_reachable(address, timeout_s=2)


@pytest.fixture
def dead_cluster_record():
    """(env, dead address): a RAY_TMPDIR whose recorded current cluster is not running."""
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="qrh-ray-") as tmp:
        dead = f"127.0.0.1:{free_port()}"
        (Path(tmp) / "ray").mkdir()
        (Path(tmp) / "ray" / "ray_current_cluster").write_text(dead)
        env = {**os.environ, "RAY_TMPDIR": tmp}
        env.pop("RAY_ADDRESS", None)
        yield env, dead


def run_child(code: str, env: dict, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=timeout)


FRESH = """
import ray
from qrhead_vllm.ray_cluster import init_ray
init_ray(None, num_cpus=1)
print("GCS", ray._private.worker.global_worker.node.gcs_address)
ray.shutdown()
"""


@pytest.mark.slow
def test_no_address_starts_a_fresh_cluster_despite_a_dead_record(dead_cluster_record):
    env, dead = dead_cluster_record
    out = run_child(FRESH, env)      # ray.init(address=None) would retry the dead GCS forever
    assert out.returncode == 0, out.stderr[-3000:]
    gcs = [line.split()[1] for line in out.stdout.splitlines() if line.startswith("GCS ")]
    assert gcs and gcs[0] != dead


@pytest.mark.slow
def test_serve_with_unreachable_address_exits_naming_it(dead_cluster_record):
    env, dead = dead_cluster_record
    out = subprocess.run([sys.executable, "-m", "qrhead_vllm.cli", "serve", "--address", dead,
                          "--port", str(free_port())], env=env, capture_output=True,
                         text=True, timeout=180)
    assert out.returncode == 2, out.stderr[-3000:]
    assert f"cannot reach the Ray cluster at {dead}" in out.stderr


@pytest.mark.slow
def test_detect_with_unreachable_address_raises_naming_it(dead_cluster_record):
    env, dead = dead_cluster_record
    code = ("from qrhead_vllm.detect.job import ensure_ray\n"
            "from qrhead_vllm.ray_cluster import ClusterUnreachableError\n"
            f"try:\n    ensure_ray({dead!r})\n"
            "except ClusterUnreachableError as e:\n    print('REFUSED', e)\n")
    out = run_child(code, env)
    assert out.returncode == 0 and f"REFUSED cannot reach the Ray cluster at {dead}" in \
        out.stdout, out.stderr[-3000:]
