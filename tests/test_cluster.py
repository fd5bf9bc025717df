"""A real two-node Ray cluster on this machine (bench/serve/local_cluster.py): ``ray start --head``
with ``{"node_a": 1}`` and ``ray start --address=...`` with ``{"node_b": 1}``, one CPU each.

Serve: configs/serve/cluster-cpu.yaml as shipped (the retriever pinned to node A, the generator
to node B, a proxy and an ingress replica on every node); reranks through each node's proxy
equal the offline ``QRHeadRanker(backend="vllm", dtype="float32")``. Detection: two actors, one
per node; node B is SIGKILLed while its actor scores, and the job finishes on node A from its
checkpoint with the head config of an uninterrupted run. Autoscaling: the retriever
unpinned with 1 to 2 replicas (bench/serve/autoscale.py's config); under load a second
replica starts on the other node and both answer. One cluster for the whole module; the
detection class runs last, as it kills node B.
"""

from __future__ import annotations

import json

import httpx
import pytest
import yaml

from conftest import HOTPOTQA_DETECT, HOTPOTQA_EVAL
from qrhead_vllm import configs
from bench.serve.local_cluster import LocalCluster, NodeSpec, deploy
from bench.serve.replicas import replica_nodes

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]
CONFIG = configs.path("serve", "cluster-cpu.yaml")
TOL = dict(rel=1e-4, abs=1e-5)             # as tests/test_serve_app.py: fp32, batch-shape noise
N = 6                                      # detection examples


@pytest.fixture(scope="module")
def serve_config():
    from qrhead_vllm.serve.args import QRHeadServeConfig
    return QRHeadServeConfig.from_yaml(CONFIG, **{"http.host": "127.0.0.1",
                                                  "http.api_key_file": None})  # keys: test_serve_auth*


@pytest.fixture(scope="module")
def reference(serve_config):
    """Cases and their offline scores, computed in a child process before the app starts (one
    engine at a time)."""
    from tests.serve_harness import hotpotqa_examples, offline_reference, reference_cases
    cases = reference_cases(hotpotqa_examples(HOTPOTQA_EVAL))
    return cases, offline_reference(serve_config, cases)


@pytest.fixture(scope="module")
def cluster():
    import ray
    assert not ray.is_initialized(), "another test left Ray initialised in this process"
    with LocalCluster([NodeSpec("node_a"), NodeSpec("node_b")]) as c:
        c.connect(log_to_driver=False)
        try:
            yield c
        finally:
            c.disconnect()


class TestServeAcrossNodes:
    @pytest.fixture(scope="class")
    def app(self, cluster, serve_config, reference):
        from ray import serve

        proxy_location = yaml.safe_load(CONFIG.read_text())["proxy_location"]
        try:
            yield deploy(cluster, serve_config, proxy_location)
        finally:
            serve.shutdown()

    def test_replicas_land_on_their_nodes(self, app, cluster):
        assert cluster.nodes["node_a"].http_port != cluster.nodes["node_b"].http_port
        placed = replica_nodes(cluster)
        assert placed["retriever"] == ["node_a"]
        assert placed["generator"] == ["node_b"]
        assert placed["ingress"] == ["node_a", "node_b"], placed

    @pytest.mark.parametrize("node", ["node_a", "node_b"])
    def test_rerank_through_each_proxy_equals_offline(self, app, reference, node):
        cases, scores = reference
        for case, ref in zip(cases, scores):
            r = httpx.post(f"{app[node]}/v1/rerank", timeout=600,
                           json={"query": case["query"], "documents": case["documents"]})
            assert r.status_code == 200, r.text
            got = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
            assert got == pytest.approx(ref, **TOL)
            assert [x["index"] for x in r.json()["results"]] == sorted(ref, key=ref.get,
                                                                      reverse=True)

    @pytest.mark.parametrize("node", ["node_a", "node_b"])
    def test_chat_through_each_proxy_reaches_the_generator(self, app, node):
        r = httpx.post(f"{app[node]}/v1/chat/completions", timeout=600, json={
            "model": "smollm2-135m", "max_tokens": 8, "temperature": 0,
            "messages": [{"role": "user", "content": "What is the capital of France?"}]})
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] > 0


class TestAutoscalingAcrossNodes:
    """bench/serve/autoscale.py's run, shortened: the retriever autoscaled from 1 to 2
    replicas (at most one per node); under load a second one starts on the other node and
    both answer reranks, none of which fails."""

    @pytest.fixture(scope="class")
    def scaled(self, cluster):
        import asyncio

        from ray import serve

        from bench.serve.autoscale import DEPLOYMENT, autoscaled_config, scale_up
        try:
            url = deploy(cluster, autoscaled_config())["node_a"]
            assert replica_nodes(cluster)[DEPLOYMENT] in (["node_a"], ["node_b"])
            yield asyncio.run(scale_up(cluster, url, clients=6, docs=4, settle_s=5,
                                       timeout_s=600))
        finally:
            serve.shutdown()

    def test_a_second_replica_starts_on_the_other_node_and_serves(self, scaled):
        assert "second_served" in scaled["events"], scaled
        assert scaled["placements"] == ["node_a", "node_b"], scaled
        served = sorted(scaled["served"].values())
        assert len(served) == 2 and served[0] > 0, scaled["served"]

    def test_no_request_fails_while_scaling(self, scaled):
        assert set(scaled["statuses"]) == {200}, scaled["statuses"]


def detect_job(tmp, name: str):
    from qrhead_vllm.detect import DetectConfig
    # 0.5 CPU each on 1-CPU nodes, spread: one actor per node, and a survivor has room for
    # the actor of a lost node.
    return DetectConfig(data=str(HOTPOTQA_DETECT), split="all", limit=N, max_words=25, top_k=8,
                        num_actors=2, cpus_per_actor=0.5, placement="spread",
                        output=str(tmp / f"{name}.yaml"), run_dir=str(tmp / name),
                        progress=False)


def watch(cluster: LocalCluster, also=None):
    """An ``on_records`` hook that notes each node's processes while the actors live (they are
    killed when the job ends); ``also`` runs after it."""
    seen: dict[str, set[int]] = {}

    def hook(done: int, actors: list) -> None:
        for name in list(cluster.nodes):
            seen.setdefault(name, set()).update(cluster.node_pids(name))
        if also is not None:
            also(done, actors)
    return hook, seen


class TestDetectionAcrossNodes:
    @pytest.fixture(scope="class")
    def baseline(self, cluster, tmp_path_factory):
        from qrhead_vllm.detect import run_detection
        tmp = tmp_path_factory.mktemp("detect")
        hook, seen = watch(cluster)
        return run_detection(detect_job(tmp, "plain"), on_records=hook), seen

    def test_uninterrupted_run_uses_both_nodes(self, baseline):
        run, seen = baseline
        pids = {r["pid"] for r in run.records}
        assert len(run.records) == N and run.computed == N
        assert pids & seen["node_a"] and pids & seen["node_b"], (pids, seen)

    def test_worker_node_killed_mid_detection(self, baseline, cluster, tmp_path):
        from qrhead_vllm.detect import run_detection
        from test_detect import same_heads

        cfg = detect_job(tmp_path, "node-killed")
        ckpt = tmp_path / "node-killed" / "records.jsonl"
        killed_after: list[int] = []

        def kill_node_b(done: int, actors: list) -> None:
            # Once node B's actor has checkpointed a record it is busy with its next one.
            pids = [json.loads(line)["pid"] for line in ckpt.read_text().splitlines()]
            if not killed_after and seen["node_b"] & set(pids):
                killed_after.append(len(pids))
                cluster.kill_node("node_b")

        hook, seen = watch(cluster, kill_node_b)
        run = run_detection(cfg, on_records=hook)
        assert killed_after and killed_after[0] < N, "node B was never killed mid-job"
        assert "node_b" not in cluster.alive_nodes()
        order = [json.loads(line)["pid"] for line in ckpt.read_text().splitlines()]
        # After the kill only node A scores; at most one answer of B's (the example it was
        # finishing as it died) can still be on its way to the driver.
        late = [pid for pid in order[killed_after[0]:] if pid not in seen["node_a"]]
        assert len(late) <= 1 and set(late) <= seen["node_b"], (order, killed_after, seen)
        assert run.computed == N and len(run.records) == N
        same_heads(run.head_config, baseline[0].head_config)

