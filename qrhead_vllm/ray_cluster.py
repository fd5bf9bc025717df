"""Start or join Ray the one way every entry point does (``qrhead serve``, ``qrhead detect``).

Two rules, because ``ray.init(address=None)`` breaks both:

* **No address: a fresh local cluster.** ``ray.init(address=None)`` joins the cluster Ray last
  recorded in its temp directory (``/tmp/ray/ray_current_cluster``, written by ``ray start``):
  a dead one, where it retries the GCS every 5 s without end, or a live one that belongs to
  someone else. ``address="local"`` always starts our own.
* **An address that cannot be reached fails within a bound, naming it.** Ray itself waits
  without limit for a GCS that does not answer; we open a TCP connection to it first and give
  up after ``connect_timeout_s``.
"""

from __future__ import annotations

import os
import socket
import time

from qrhead_vllm.errors import QRHeadError

CONNECT_TIMEOUT_S = 15.0


class ClusterUnreachableError(QRHeadError, ConnectionError):
    """The Ray cluster named by an address does not answer."""


def init_ray(address: str | None = None, num_cpus: int | None = None,
             connect_timeout_s: float = CONNECT_TIMEOUT_S, **init_kwargs) -> bool:
    """Join ``address`` (checked to answer first), else start a fresh local cluster of
    ``num_cpus`` CPUs; a no-op when this process is already connected. True when this call
    started the cluster (this process owns it: stopping may stop it); False when it joined one
    or was already connected (others may use it: stopping must leave it running)."""
    import ray

    if ray.is_initialized():
        return False
    init_kwargs.setdefault("include_dashboard", False)
    if address:
        wait_reachable(address, connect_timeout_s)
        ray.init(address=address, **init_kwargs)
        return False
    # Ray starts workers at niceness 15: on a shared machine an engine or a detection actor
    # then gets a few percent of a core. A cluster we start ourselves runs at normal priority
    # (RAY_worker_niceness overrides).
    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), **init_kwargs)
    return True


def gcs_endpoint(address: str) -> tuple[str, int]:
    """(host, port) of a Ray address: ``host:port``, ``ray://host:port`` or ``auto`` (the
    cluster recorded by ``ray start`` on this machine)."""
    if address == "auto":
        from ray._private.services import canonicalize_bootstrap_address
        resolved = canonicalize_bootstrap_address("auto")
        if resolved is None:
            raise ClusterUnreachableError("--address auto: no Ray cluster is recorded on this "
                                          "machine; start one with `ray start --head` or give "
                                          "its host:port")
        address = resolved
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise ClusterUnreachableError(f"Ray address {address!r} is not host:port (e.g. "
                                      "10.0.0.5:6379 or ray://10.0.0.5:10001)")
    return host.strip("[]"), int(port)


def wait_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Return once ``address`` accepts a TCP connection; raise naming it after ``timeout_s``."""
    host, port = gcs_endpoint(address)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(5.0, timeout_s)):
                return
        except OSError as e:
            if time.monotonic() + 1 > deadline:
                raise ClusterUnreachableError(
                    f"cannot reach the Ray cluster at {address} ({host}:{port}: {e}) within "
                    f"{timeout_s:.0f} s; check that its head node is running (`ray status "
                    f"--address {host}:{port}`), or leave the address out to start a local "
                    "cluster") from None
            time.sleep(1)
