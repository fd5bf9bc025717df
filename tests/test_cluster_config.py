"""configs/serve/cluster-cpu.yaml is configs/serve/cluster.yaml with CPU resources and small
models: same builder, proxies on every node, same front door, the two engines pinned to
different nodes (tests/test_cluster.py deploys it on a real two-node cluster)."""

from __future__ import annotations

import yaml

from qrhead_vllm import configs
from qrhead_vllm.serve.args import QRHeadServeConfig

GPU, CPU = configs.path("serve", "cluster.yaml"), configs.path("serve", "cluster-cpu.yaml")


def test_cpu_cluster_config_has_the_gpu_cluster_shape():
    gpu, cpu = (yaml.safe_load(p.read_text()) for p in (GPU, CPU))
    assert cpu["proxy_location"] == gpu["proxy_location"] == "EveryNode"
    assert cpu["http_options"] == gpu["http_options"]
    (g,), (c,) = gpu["applications"], cpu["applications"]
    assert c["import_path"] == g["import_path"] == "qrhead_vllm.serve.builder:build_qrhead_app"
    assert (c["name"], c["route_prefix"]) == (g["name"], g["route_prefix"])
    assert set(c["args"]) == set(g["args"]) == {"app_name", "retriever", "generator", "rag",
                                                "http"}
    strip = lambda http: {k: v for k, v in http.items() if k != "ingress"}  # noqa: E731
    assert strip(c["args"]["http"]) == strip(g["args"]["http"])
    ingress = c["args"]["http"]["ingress"]
    assert (ingress["num_replicas"], ingress["max_replicas_per_node"]) == (2, 1)  # one per node


def test_cpu_cluster_config_pins_each_engine_to_its_node():
    cfg = QRHeadServeConfig.from_yaml(CPU)
    resources = lambda e: e.deployment.ray_actor_options["resources"]  # noqa: E731
    assert set(resources(cfg.retriever)) == {"node_a"}
    assert set(resources(cfg.generator)) == {"node_b"}
    assert cfg.retriever.dtype == "float32" and not cfg.shared_engine


def test_autoscaling_config_replaces_num_replicas_and_is_checked_at_parse_time():
    import pydantic
    import pytest

    from qrhead_vllm.serve.args import DeploymentOptions

    scaled = DeploymentOptions(num_replicas=3,
                               autoscaling_config={"min_replicas": 1, "max_replicas": 2})
    assert "num_replicas" not in scaled.serve_options()       # Serve refuses both at once
    assert scaled.serve_options()["autoscaling_config"]["max_replicas"] == 2
    assert DeploymentOptions(num_replicas=3).serve_options()["num_replicas"] == 3
    with pytest.raises(pydantic.ValidationError, match="must be greater than or equal"):
        DeploymentOptions(autoscaling_config={"min_replicas": 3, "max_replicas": 1})
    with pytest.raises(pydantic.ValidationError, match=r"unknown field\(s\) \['max_replica'\]"):
        DeploymentOptions(autoscaling_config={"max_replica": 2})   # Serve would ignore it


def test_retriever_node_fault_variant_pins_the_retriever_to_the_killed_node():
    """bench/serve/cluster_faults.py --kill retriever: the retriever alone on node B (the node
    that dies), the generator on node A, nothing else changed from cluster-cpu.yaml."""
    from bench.serve.cluster_faults import KILLED, fault_config

    shipped, swapped = QRHeadServeConfig.from_yaml(CPU), fault_config("retriever")
    options = lambda e: e.deployment.ray_actor_options  # noqa: E731
    assert KILLED == "node_b"
    assert options(swapped.retriever) == {"num_cpus": 1, "resources": {"node_b": 0.01}}
    assert options(swapped.generator) == {"num_cpus": 1, "resources": {"node_a": 0.01}}
    assert fault_config("generator").retriever.deployment == shipped.retriever.deployment
    unpinned = lambda cfg: cfg.model_dump(exclude={  # noqa: E731
        "retriever": {"deployment": {"ray_actor_options"}},
        "generator": {"deployment": {"ray_actor_options"}}, "http": {"host", "api_key_file"}})
    assert unpinned(swapped) == unpinned(shipped)
    assert (swapped.http.host, swapped.http.api_key_file) == ("127.0.0.1", None)
    assert fault_config("retriever", 30).http.replica_wait_s == 30 != shipped.http.replica_wait_s
