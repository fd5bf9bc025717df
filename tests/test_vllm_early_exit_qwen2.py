"""Score-only engines on the Qwen2 architecture (Qwen2ForCausalLM: the bundled Qwen2.5-Coder
0.5B and 1.5B): the cut model scores exactly as the full one.

CI installs neither Qwen model, so the engines here run a small Qwen2 built from a config
(6 layers, 4 query / 2 KV heads of size 64, random weights, SmolLM2's tokenizer): the cut is a
property of how vLLM builds the architecture, not of trained weights. The same comparison on
the real Qwen2.5-Coder-0.5B (fp32, 512-token chunks, 4 HotpotQA prompts) gave rows equal to the
full engine's bit for bit (docs/engines.md, "Score-only engines").
"""

from __future__ import annotations

import pytest
import torch

from qrhead_vllm.ranker import QRHeadRanker

pytestmark = pytest.mark.slow
HEADS = [(0, 1), (2, 3), (3, 0)]          # both KV groups; the cut after layer 3 of 6
ENGINE = dict(backend="vllm", max_model_len=2048, max_num_batched_tokens=256, max_num_seqs=8,
              dtype="float32")


@pytest.fixture(scope="module")
def qwen2_dir(tmp_path_factory):
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from qrhead_vllm.models import resolve_model
    path = tmp_path_factory.mktemp("tiny-qwen2")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m").path)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512,
                         num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=4096, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).to(torch.float32).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def engines(qwen2_dir):
    full = QRHeadRanker(qwen2_dir, heads=HEADS, **ENGINE)
    cut = QRHeadRanker(qwen2_dir, heads=HEADS, score_only=True, **ENGINE)
    yield full, cut
    cut.close()
    full.close()


def test_qwen2_score_only_engine_equals_the_full_model(engines, hotpotqa_split):
    full, cut = engines
    assert full.backend.hf_config.architectures == ["Qwen2ForCausalLM"]
    assert cut.backend.last_layer == 3 and full.backend.last_layer is None
    # Four documents: prompts of ~600 tokens, prefilled in several 256-token chunks.
    requests = [full.prepare(e.query, list(e.documents)[:4])[1] for e in hotpotqa_split[1][:3]]
    assert all(r.real.num_tokens > 256 for r in requests)
    for a, b in zip(full.backend.attention_mass(requests), cut.backend.attention_mass(requests)):
        assert (a.real - b.real).abs().max() <= 1e-5
        assert (a.null - b.null).abs().max() <= 1e-5
