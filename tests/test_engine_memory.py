"""CPU engine sizing (qrhead_vllm/integration/memory.py): the KV budget follows the model and
the context, never a fraction of the box, and a box that cannot fit the engine is refused before
it starts with the numbers and the knobs in the message."""

from __future__ import annotations

import pytest

from qrhead_vllm.errors import InsufficientMemoryError
from qrhead_vllm.heads import ModelFacts
from qrhead_vllm.integration.memory import (
    GiB, HEADROOM_BYTES, kv_bytes_per_token, plan_cpu_memory, weight_bytes,
)
from qrhead_vllm.integration.vllm.engine_args import node_of_binding

SMOLLM2 = ModelFacts(model_id="HuggingFaceTB/SmolLM2-135M-Instruct",
                     architecture="LlamaForCausalLM", num_layers=30, num_heads=9,
                     num_kv_heads=3, head_dim=64)
LLAMA_70B = ModelFacts(model_id="meta-llama/Llama-3.1-70B-Instruct",
                       architecture="LlamaForCausalLM", num_layers=80, num_heads=64,
                       num_kv_heads=8, head_dim=128)
SMOLLM2_WEIGHTS = 538 * 2**20      # the dequantised fp32 safetensors


def test_kv_bytes_per_token_counts_keys_and_values_of_every_layer():
    assert kv_bytes_per_token(SMOLLM2, "float32") == 2 * 30 * 3 * 64 * 4 == 46080
    assert kv_bytes_per_token(SMOLLM2, "bfloat16") == 46080 // 2


@pytest.mark.parametrize("node_gib", [12, 24])
def test_budget_depends_on_the_model_not_on_the_node(node_gib):
    """The issue's failure: 0.12 × 11.96 GiB left a negative KV budget. Sized by need, the same
    engine gets the same KV cache on a 12 and a 24 GiB node."""
    plan = plan_cpu_memory(SMOLLM2, "float32", 4096, available_bytes=node_gib * GiB,
                           weights=SMOLLM2_WEIGHTS, kv_cache_sequences=4)
    assert plan.kv_cache_bytes == 4 * 4096 * 46080            # 720 MiB, whole blocks
    assert plan.need_bytes == plan.kv_cache_bytes + SMOLLM2_WEIGHTS + HEADROOM_BYTES
    assert plan.need_bytes < 12 * GiB


def test_budget_rounds_up_to_whole_blocks():
    plan = plan_cpu_memory(SMOLLM2, "float32", 1000, available_bytes=24 * GiB,
                           kv_cache_sequences=1, block_size=128)
    assert plan.kv_cache_bytes == 1024 * 46080


def test_a_model_that_does_not_fit_is_refused_with_numbers_and_knobs():
    weights_70b = 141 * GiB  # bf16
    with pytest.raises(InsufficientMemoryError) as err:
        plan_cpu_memory(LLAMA_70B, "bfloat16", 8192, available_bytes=24 * GiB,
                        weights=weights_70b, kv_cache_sequences=2)
    msg = str(err.value)
    for part in ("Llama-3.1-70B-Instruct", "weights 141.00 GiB", "KV cache 5.00 GiB",
                 "2 × 8192 tokens", "24.00 GiB available", "max_model_len",
                 "kv_cache_sequences", "kv_cache_memory_bytes"):
        assert part in msg, (part, msg)


def test_kv_cache_alone_can_overflow_a_small_node():
    with pytest.raises(InsufficientMemoryError, match="KV cache 11.25 GiB"):
        plan_cpu_memory(SMOLLM2, "float32", 65536, available_bytes=12 * GiB,
                        weights=SMOLLM2_WEIGHTS, kv_cache_sequences=4)


def test_weight_bytes_count_tensors_in_the_requested_dtype(tmp_path):
    import torch
    from safetensors.torch import save_file
    save_file({"model.embed_tokens.weight": torch.zeros(10, 4),
               "model.layers.0.mlp.weight": torch.zeros(4, 4),
               "model.layers.1.mlp.weight": torch.zeros(4, 4),
               "model.layers.12.mlp.weight": torch.zeros(4, 4)}, tmp_path / "model.safetensors")
    assert weight_bytes(str(tmp_path), "float32") == (40 + 3 * 16) * 4
    assert weight_bytes(str(tmp_path), "bfloat16") == (40 + 3 * 16) * 2
    # A score-only engine cut after layer 1 holds neither layer 12 (nor "layers.1" twice).
    assert weight_bytes(str(tmp_path), "float32", last_layer=1) == (40 + 2 * 16) * 4
    assert weight_bytes("org/hub-id", "float32") is None


def test_score_only_engine_is_sized_for_its_layers():
    plan = plan_cpu_memory(SMOLLM2, "float32", 4096, available_bytes=24 * GiB,
                           kv_cache_sequences=2, num_layers=24)
    assert plan.kv_cache_bytes == 2 * 4096 * kv_bytes_per_token(SMOLLM2, "float32", 24)
    assert kv_bytes_per_token(SMOLLM2, "float32", 24) * 30 == 46080 * 24
    assert "weights of layers 0..23" in plan.describe()


def test_node_of_binding_reads_the_first_cpu():
    assert node_of_binding("0-1") == 0
    assert node_of_binding(None) == 0
    assert node_of_binding("garbage") == 0
