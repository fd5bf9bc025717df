"""The SGLang hook on Gemma 3 270M: sliding-window layers (512 tokens) beside global ones,
qk-norm, query_pre_attn_scalar scaling, one KV head. SGLang would keep the sliding layers' keys
in a separate hybrid SWA pool; scoring engines start with ``disable_hybrid_swa_memory=True``
(the start-up check refuses the SWA pool otherwise), so every layer's keys are in the one NHD
pool and the capture applies the window itself (``sliding_window_size`` + 1 tokens).

Equivalence with the reference port on HotpotQA prompts (1.3-1.6K tokens, beyond the window),
chunked (512-token steps), batched, with the null pass served from the radix cache.
"""

from __future__ import annotations

import pytest

from qrhead_vllm.ranker import QRHeadRanker
from sglang_helpers import GEMMA3_HEADS, assert_equivalent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gemma_sglang():
    ranker = QRHeadRanker("gemma3-270m", heads=GEMMA3_HEADS, backend="sglang",
                          max_model_len=4096, chunked_prefill_size=512, max_running_requests=8)
    yield ranker
    ranker.close()


def test_gemma3_equivalence_chunked_and_batched(gemma_sglang, gemma3_backend, hotpotqa_split):
    reference = QRHeadRanker("gemma3-270m", heads=GEMMA3_HEADS, backend=gemma3_backend)
    examples = hotpotqa_split[1][:4]
    reqs = [reference.prepare(e.query, list(e.documents))[1] for e in examples]
    window = gemma3_backend.hf_config.sliding_window
    assert all(r.real.num_tokens > window for r in reqs), "prompts must exceed the window"
    got = gemma_sglang.backend.attention_mass(reqs)       # one engine batch, chunked
    for g, req in zip(got, reqs):
        [want] = reference.backend.attention_mass([req])
        assert_equivalent(g, want, req)
        assert g.null_cached_tokens == req.real.query_start


def test_gemma3_engine_left_nothing(gemma_sglang):
    assert gemma_sglang.backend.stats() == {"active": 0}
