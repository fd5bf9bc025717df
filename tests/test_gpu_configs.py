"""The GPU serve configs (configs/serve/gpu-8b.yaml, gpu-70b-tp8.yaml) without a GPU: they load
through the real config loader, name shipped heads that fit their model, give vLLM engine
arguments it knows and a backend the hook reads, place their TP workers as vLLM's Ray executor
needs, and the head->rank map the capture computes for TP 4 and 8 puts every head on one rank
with the right local indices (docs/gpu.md). Nothing starts; no engine runs here.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import tomllib
from pathlib import Path

import pytest
from transformers import LlamaConfig

from qrhead_vllm import configs
from qrhead_vllm.commands import serve as serve_command
from qrhead_vllm.core import LocalHead, shard_heads
from qrhead_vllm.core.capture import layer_heads
from qrhead_vllm.errors import HeadConfigError
from qrhead_vllm.head_registry import resolve_heads
from qrhead_vllm.heads import ModelFacts
from qrhead_vllm.serve.args import QRHeadServeConfig
from qrhead_vllm.serve.builder import load_config
from test_core_heads import global_kv_heads_on_rank

REPO = Path(__file__).resolve().parents[1]
GPU_8B, GPU_70B = "gpu-8b.yaml", "gpu-70b-tp8.yaml"
# The architecture fields of the hub's config.json (meta-llama/Llama-3.1-{8B,70B}-Instruct):
# what ModelFacts.from_hf_config reads when the engine loads the model.
LLAMA_31 = {
    "meta-llama/Llama-3.1-8B-Instruct": dict(hidden_size=4096, num_hidden_layers=32,
                                             num_attention_heads=32, num_key_value_heads=8),
    "meta-llama/Llama-3.1-70B-Instruct": dict(hidden_size=8192, num_hidden_layers=80,
                                              num_attention_heads=64, num_key_value_heads=8),
}


def config(name: str) -> QRHeadServeConfig:
    return QRHeadServeConfig.from_yaml(configs.path("serve", name))


def facts_of(model_id: str) -> ModelFacts:
    hf = LlamaConfig(architectures=["LlamaForCausalLM"], **LLAMA_31[model_id])
    return ModelFacts.from_hf_config(hf, model_id)


@pytest.mark.parametrize("name,model,tp", [
    (GPU_8B, "meta-llama/Llama-3.1-8B-Instruct", 1),
    (GPU_70B, "meta-llama/Llama-3.1-70B-Instruct", 8),
])
def test_config_loads_as_the_app_loads_it(name, model, tp):
    cfg = load_config({"config": str(configs.path("serve", name))})
    assert cfg == config(name)
    assert (cfg.retriever.model, cfg.retriever.dtype) == (model, "bfloat16")
    assert cfg.retriever.tensor_parallel_size == tp
    assert cfg.shared_engine                      # the retriever's engine also generates
    assert cfg.retriever.enforce_eager


@pytest.mark.parametrize("name", [GPU_8B, GPU_70B])
def test_named_heads_are_shipped_and_fit_the_model(name):
    retriever = config(name).retriever
    heads = resolve_heads(retriever.head_spec, retriever.model, facts_of(retriever.model))
    assert heads.name == retriever.heads
    assert heads.model.model_id == retriever.model


def test_heads_of_another_shape_are_refused():
    # The check the configs pass above can fail: the 8B heads on the 70B model's shape.
    with pytest.raises(HeadConfigError, match="num_layers=32"):
        resolve_heads(config(GPU_8B).retriever.heads, "meta-llama/Llama-3.1-70B-Instruct",
                      facts_of("meta-llama/Llama-3.1-70B-Instruct"))


@pytest.mark.parametrize("name", [GPU_8B, GPU_70B])
def test_engine_arguments_are_vllms_and_the_backend_is_one_the_hook_reads(name):
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    from qrhead_vllm.integration.vllm.kv_layout import VERIFIED
    from qrhead_vllm.models import resolve_model
    from qrhead_vllm.serve.vllm_server import engine_kwargs_for

    retriever = config(name).retriever
    kwargs = engine_kwargs_for(retriever, resolve_model(retriever.model), True, ["x"])
    # field names, not AsyncEngineArgs(**kwargs): its __post_init__ resolves the hub model,
    # which the suite runs without (HF_HUB_OFFLINE=1)
    unknown = set(kwargs) - {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    assert not unknown, f"not vLLM engine arguments: {sorted(unknown)}"
    backend = AttentionBackendEnum[kwargs["attention_backend"]].get_class()
    assert (backend.get_impl_cls().__name__, None) in VERIFIED


def test_tp8_places_one_gpu_bundle_per_rank_on_one_node():
    retriever = config(GPU_70B).retriever
    bundles = retriever.deployment.placement_group_bundles
    assert sum(b.get("GPU", 0) for b in bundles) == retriever.tensor_parallel_size
    assert all(b.get("GPU", 0) in (0, 1) for b in bundles)   # vLLM puts one rank per GPU bundle
    assert retriever.deployment.placement_group_strategy == "STRICT_PACK"
    assert retriever.engine_args["distributed_executor_backend"] == "ray"
    assert config(GPU_8B).retriever.deployment.ray_actor_options["num_gpus"] == 1


def test_tp8_ray_workers_get_the_hook_switch(monkeypatch):
    # vLLM's Ray executor copies its own variables to the worker actors, not QRHEAD_ENABLED;
    # engine_env (which every hooked engine starts under) adds ours to the list it copies.
    from vllm import envs
    from vllm.ray.ray_env import get_env_vars_to_copy

    from qrhead_vllm.integration.vllm.engine_args import engine_env

    envs.disable_envs_cache()   # an in-process engine started earlier in the session froze them
    monkeypatch.setenv("VLLM_RAY_EXTRA_ENV_VARS_TO_COPY", "MY_VAR")
    assert "QRHEAD_ENABLED" not in get_env_vars_to_copy()
    with engine_env(config(GPU_70B).retriever.tensor_parallel_size):
        copied = get_env_vars_to_copy()
        assert {"QRHEAD_ENABLED", "QRHEAD_SKIP_VERSION_CHECK", "MY_VAR"} <= set(copied)
    assert "QRHEAD_ENABLED" not in get_env_vars_to_copy()    # restored after the start


@pytest.mark.parametrize("heads", ["llama-3.1-70b-instruct-nq", "llama-3.1-70b-instruct-lme"])
@pytest.mark.parametrize("tp", [4, 8])
def test_70b_heads_land_on_one_rank_each_with_the_right_local_indices(heads, tp):
    model = facts_of("meta-llama/Llama-3.1-70B-Instruct")
    pairs = resolve_heads(heads, model.model_id, model).pairs
    shards = shard_heads(pairs, model.num_heads, model.num_kv_heads, tp)
    per_rank, group = model.num_heads // tp, model.num_heads // model.num_kv_heads
    placed = []
    for rank, local in shards.items():
        kv_on_rank = global_kv_heads_on_rank(rank, model.num_kv_heads, tp)
        for h in local:
            layer, head = pairs[h.index]
            assert (h.layer, h.local_head) == (layer, head - rank * per_rank)
            assert kv_on_rank[h.local_kv_head] == head // group
            placed.append(h.index)
    assert sorted(placed) == list(range(len(pairs)))      # every head, on exactly one rank
    captured = [i for r in range(tp) for lh in layer_heads(pairs, model.num_heads,
                                                            model.num_kv_heads, tp, r).values()
                for i in lh.index]
    assert sorted(captured) == list(range(len(pairs)))    # what each rank's capture reads


def test_the_worked_example_of_docs_gpu_md():
    # docs/gpu.md's table: the 70B NQ heads at TP 8 (8 query heads and 1 KV head per rank).
    model = facts_of("meta-llama/Llama-3.1-70B-Instruct")
    pairs = resolve_heads("llama-3.1-70b-instruct-nq", model.model_id, model).pairs
    shards = shard_heads(pairs, 64, 8, 8)
    assert [len(shards[r]) for r in range(8)] == [3, 1, 9, 10, 3, 4, 1, 1]
    assert shards[4][0] == LocalHead(0, 31, 0, 0)         # 31-32, the best head
    assert shards[3][8] == LocalHead(26, 64, 7, 0)        # 64-31, the deepest
    assert shards[7] == [LocalHead(11, 52, 2, 0)]         # 52-58


@pytest.mark.parametrize("name", [GPU_8B, GPU_70B])
def test_the_wheel_ships_the_config_and_qrhead_serve_loads_it(name):
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["qrhead_vllm.configs"]
    assert any(fnmatch.fnmatch(f"serve/{name}", pattern) for pattern in package_data)
    shipped = configs.path("serve", name)                  # where the wheel puts it
    parser = argparse.ArgumentParser()
    serve_command.add_arguments(parser)
    args = parser.parse_args(["--config", str(shipped)])
    assert load_config({"config": args.config}) == config(name)   # what `qrhead serve` loads
