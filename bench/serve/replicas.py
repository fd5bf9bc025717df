"""The replicas behind a Serve deployment: their processes (for the fault benches and tests
that kill them), their nodes and the calls each answered (autoscaling), and Serve's own view
when a deploy times out."""

from __future__ import annotations


def engine_replica_pids(app_name: str, deployment: str = "engine") -> list[int]:
    """Process ids of the live replicas of a deployment of this process's Ray cluster (from
    the GCS actor table: the state API needs the dashboard, which the launcher leaves off)."""
    from ray._private.state import actors

    cls = f"ServeReplica:{app_name}:{deployment}"
    return [a["Pid"] for a in actors().values()
            if a["ActorClassName"] == cls and a["State"] == "ALIVE"]


def replicas(cluster, deployment: str) -> dict[str, str]:
    """``{replica id: node name}`` of a deployment's live replicas, from the GCS actor
    table (a :class:`~bench.serve.local_cluster.LocalCluster` this process is connected to)."""
    import ray

    names = {node_id: name for name, node_id in cluster.alive_nodes().items()}
    out = {}
    for actor in ray._private.state.actors().values():
        parts = (actor.get("Name") or "").split("#")    # SERVE_REPLICA::app#deployment#id
        if (actor["State"] == "ALIVE" and parts[0].startswith("SERVE_REPLICA::")
                and parts[1] == deployment):
            out[parts[2]] = names.get(actor["Address"]["NodeID"], "?")
    return out


def replica_nodes(cluster) -> dict[str, list[str]]:
    """``{deployment: [node name of each live replica]}``."""
    import ray

    deployments = {(a.get("Name") or "").split("#")[1]
                   for a in ray._private.state.actors().values()
                   if (a.get("Name") or "").startswith("SERVE_REPLICA::")}
    placed = {d: sorted(replicas(cluster, d).values()) for d in deployments}
    return {d: nodes for d, nodes in placed.items() if nodes}


def served_calls(cluster, deployment: str, method: str,
                 live: dict[str, str] | None = None) -> dict[str, int]:
    """``{replica id: handle calls of method answered OK}`` for each live replica, from the
    access log Serve writes per call (``<app>_<deployment> <replica> <request id> -- CALL
    <method> OK <ms>``). Serve puts it in the replica's log file, and on stderr (the worker's
    ``.err`` file), where it alone survives once vLLM configures the process's logging: both
    are read, each request id counted once."""
    ids = replicas(cluster, deployment) if live is None else live
    seen: dict[str, set[str]] = {replica: set() for replica in ids}
    marker = f"-- CALL {method} OK "
    for node in cluster.nodes.values():
        logs = node.temp_dir / "session_latest" / "logs"
        for log in [*logs.glob("worker-*.err"), *logs.glob(f"serve/replica_*_{deployment}_*.log")]:
            for line in log.read_text(errors="replace").splitlines():
                if marker in line:
                    words = line.split(" -- ")[0].split()
                    if len(words) >= 2 and words[-2] in seen:   # ... <replica> <request id>
                        seen[words[-2]].add(words[-1])
    return {replica: len(requests) for replica, requests in seen.items()}


def serve_state() -> str:
    """Serve's view (proxies per node, application status) for a deploy that timed out."""
    from ray import serve
    try:
        status = serve.status()
    except Exception as e:              # noqa: BLE001 - a diagnostic, never the error itself
        return f"serve.status() failed: {e!r}"
    proxies = {node[:8]: str(state) for node, state in status.proxies.items()}
    apps = {name: (str(app.status), app.message) for name, app in status.applications.items()}
    return f"Serve proxies by node id: {proxies}; applications: {apps}"
