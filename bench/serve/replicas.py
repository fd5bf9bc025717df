"""The processes behind a Serve deployment, for the fault benches and tests that kill them."""

from __future__ import annotations


def engine_replica_pids(app_name: str, deployment: str = "engine") -> list[int]:
    """Process ids of the live replicas of a deployment of this process's Ray cluster (from
    the GCS actor table: the state API needs the dashboard, which the launcher leaves off)."""
    from ray._private.state import actors

    cls = f"ServeReplica:{app_name}:{deployment}"
    return [a["Pid"] for a in actors().values()
            if a["ActorClassName"] == cls and a["State"] == "ALIVE"]
