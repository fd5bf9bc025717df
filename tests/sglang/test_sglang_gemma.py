"""The SGLang hook on Gemma 3 270M: sliding-window layers (512 tokens) beside global ones,
qk-norm, query_pre_attn_scalar scaling, one KV head. SGLang would keep the sliding layers' keys
in a separate hybrid SWA pool; scoring engines start with ``disable_hybrid_swa_memory=True``
(the start-up check refuses the SWA pool otherwise), so every layer's keys are in the one NHD
pool and the capture applies the window itself (``sliding_window_size`` + 1 tokens).

The situations of test_sglang_hook.py, against the reference port, on prompts of as few real
documents as exceed the window (~550-700 tokens: cheap enough for SGLang's CPU attention, which
recomputes the whole prefix at every chunk): 256-token chunks (some query spans straddle two),
8 requests batched with the null pass served from the radix cache, one-step prefill, a warm
repeat, and scoring in the same batch as generation.
"""

from __future__ import annotations

import pytest

from qrhead_vllm.backends import MassRequest
from qrhead_vllm.integration.sglang.backend import scoring_request
from qrhead_vllm.integration.sglang.results import decode_result
from qrhead_vllm.ranker import QRHeadRanker
from sglang_helpers import GEMMA3_HEADS, assert_equivalent, cold_then_warm_hits, max_diff

pytestmark = pytest.mark.slow
CHUNK = 256


@pytest.fixture(scope="module")
def gemma_sglang():
    ranker = QRHeadRanker("gemma3-270m", heads=GEMMA3_HEADS, backend="sglang",
                          max_model_len=4096, chunked_prefill_size=CHUNK, max_running_requests=8,
                          dtype="float32")
    yield ranker
    ranker.close()


@pytest.fixture(scope="module")
def reference(gemma3_backend):
    return QRHeadRanker("gemma3-270m", heads=GEMMA3_HEADS, backend=gemma3_backend)


@pytest.fixture(scope="module")
def requests(reference, hotpotqa_split):
    """Per record, its first documents, as few as make the prompt exceed the sliding window."""
    window = reference.backend.hf_config.sliding_window
    out = []
    for e in hotpotqa_split[1][:8]:
        for k in range(1, len(e.documents) + 1):
            req = reference.prepare(e.query, list(e.documents)[:k])[1]
            if req.real.num_tokens > window + 32:
                break
        out.append(req)
    return out


def _want(reference, req):
    return reference.backend.attention_mass([req])[0]


def test_gemma3_chunked_batched_null_from_cache(gemma_sglang, reference, requests):
    window = reference.backend.hf_config.sliding_window
    assert all(r.real.num_tokens > window for r in requests), "prompts must exceed the window"
    assert any(r.real.query_start // CHUNK != (r.real.num_tokens - 1) // CHUNK for r in requests)
    got = gemma_sglang.backend.attention_mass(requests)     # one engine batch, chunked
    for g, req in zip(got, requests):
        assert_equivalent(g, _want(reference, req), req)
        assert g.null_cached_tokens == req.real.query_start


def test_gemma3_one_step_and_warm_repeat(gemma_sglang, reference, hotpotqa_split):
    e = hotpotqa_split[1][0]
    req = reference.prepare(e.query, list(e.documents)[:1])[1]
    assert req.real.num_tokens < CHUNK
    want = _want(reference, req)
    assert cold_then_warm_hits(gemma_sglang.backend, req, want) == [0, req.real.query_start]


def test_gemma3_interleaved_with_generation(gemma_sglang, reference, requests):
    req = requests[0]
    ids, params, _ = scoring_request(req.real, req.heads)
    plain = gemma_sglang.backend.tokenizer("The capital of France is")["input_ids"]
    chat = {"max_new_tokens": 8, "temperature": 0.0}
    outs = gemma_sglang.backend.engine.generate(input_ids=[plain] * 2 + [ids],
                                                sampling_params=[chat] * 2 + [params])
    assert all(o["meta_info"]["completion_tokens"] == 8 for o in outs[:2])
    rows = decode_result(outs[2]["meta_info"], len(req.heads))
    want = reference.backend.attention_mass([MassRequest(req.real, None, req.heads)])[0]
    assert max_diff(rows, want.real) <= 1e-4


def test_gemma3_engine_left_nothing(gemma_sglang):
    assert gemma_sglang.backend.stats() == {"active": 0}
