"""Score-only engines (issue 13): the model is built, loaded and run only up to the deepest layer
scoring needs, and the scores stay the full model's.

Two real engines side by side on the bundled SmolLM2 (30 layers), both fp32 with chunked prefill
(512-token steps that split the documents and the query span): the full model, and a score-only
engine cut after layer 23, the deepest layer of the shipped heads. A head set spanning layer 0
and layer 23 scores equally on both (≤ 1e-5), real and null pass, one by one and batched; the
cut engine holds 24 attention layers and less memory; heads deeper than the cut and generation
are refused with the layer named, at ranker construction, at admission and in the worker.
"""

from __future__ import annotations

import pytest
import torch

from qrhead_vllm.core import score_documents
from qrhead_vllm.errors import CaptureError, EngineCompatibilityError, HeadConfigError
from qrhead_vllm.ranker import QRHeadRanker

pytestmark = pytest.mark.slow
LAST = 23
# First and deepest allowed layer, all three KV groups of SmolLM2 (GQA 9 q / 3 kv heads).
HEADS = [(0, 2), (3, 4), (9, 8), (14, 1), (17, 5), (LAST, 7)]
ENGINE = dict(backend="vllm", max_model_len=4096, max_num_batched_tokens=512, max_num_seqs=16,
              dtype="float32")   # the weight-byte counts below are fp32


@pytest.fixture(scope="module")
def full():
    ranker = QRHeadRanker("smollm2-135m", heads=HEADS, **ENGINE)
    yield ranker
    ranker.close()


@pytest.fixture(scope="module")
def cut():
    ranker = QRHeadRanker("smollm2-135m", heads=HEADS, score_only=True, **ENGINE)
    yield ranker
    ranker.close()


@pytest.fixture(scope="module")
def requests(full, hotpotqa_split):
    return [full.prepare(e.query, list(e.documents))[1] for e in hotpotqa_split[1][:6]]


def _assert_equal(a, b, req):
    assert (a.real - b.real).abs().max() <= 1e-5
    assert (a.null - b.null).abs().max() <= 1e-5
    spans = req.real.doc_spans
    assert torch.allclose(score_documents(a.real, a.null, spans),
                          score_documents(b.real, b.null, spans), atol=1e-5, rtol=0)


def test_the_cut_comes_from_the_deepest_head(cut, full):
    assert cut.backend.last_layer == LAST and full.backend.last_layer is None


def test_scores_equal_the_full_model_under_chunked_prefill(full, cut, requests):
    # At 512 tokens per step the query span crosses a step boundary for some prompt.
    assert any(r.real.query_start // 512 != (r.real.num_tokens - 1) // 512 for r in requests)
    for req in requests[:3]:
        [a] = full.backend.attention_mass([req])
        [b] = cut.backend.attention_mass([req])
        _assert_equal(a, b, req)
        assert b.null_cached_tokens > 0            # the null pass still hits the prefix cache


def test_scores_equal_the_full_model_batched(full, cut, requests):
    for a, b, req in zip(full.backend.attention_mass(requests),
                         cut.backend.attention_mass(requests), requests):
        _assert_equal(a, b, req)


def test_shipped_heads_rank_alike_on_both(full, cut, hotpotqa_split):
    e = hotpotqa_split[1][7]
    got = [QRHeadRanker("smollm2-135m", backend=r.backend).rank(e.query, list(e.documents))
           for r in (full, cut)]
    assert [x.doc_id for x in got[0]] == [x.doc_id for x in got[1]]
    assert max(abs(x.score - y.score) for x, y in zip(got[0], got[1])) <= 1e-5


def test_later_layers_are_neither_built_nor_held_in_memory(full, cut):
    [f] = full.backend.llm.collective_rpc("qrhead_memory")
    [c] = cut.backend.llm.collective_rpc("qrhead_memory")
    assert (f["attention_layers"], c["attention_layers"]) == (30, LAST + 1)
    # Six decoder layers of SmolLM2: 4 projections + 3 MLP matrices + 2 norms, fp32.
    per_layer = 4 * (576 * 576 * 2 + 576 * 192 * 2 + 3 * 576 * 1536 + 2 * 576)
    assert f["weight_bytes"] - c["weight_bytes"] == (29 - LAST) * per_layer
    # Sized for the same tokens: the KV cache of 24 layers instead of 30.
    assert c["kv_cache_bytes"] * 30 == f["kv_cache_bytes"] * (LAST + 1)


def test_heads_beyond_the_cut_are_refused_at_ranker_construction(cut):
    with pytest.raises(HeadConfigError, match=r"heads in layer 29 lie beyond .* last layer 23"):
        QRHeadRanker("smollm2-135m", heads=[(0, 0), (29, 3)], backend=cut.backend)
    with pytest.raises(HeadConfigError, match="layer 29"):      # every head (ICR)
        QRHeadRanker("smollm2-135m", heads="all", backend=cut.backend)


def test_heads_beyond_the_cut_are_refused_at_admission(cut, requests):
    from qrhead_vllm.integration.vllm.backend import scoring_request
    from vllm.exceptions import VLLMValidationError
    prompt, params, _ = scoring_request(requests[0].real, [(2, 0), (25, 1)])
    with pytest.raises(VLLMValidationError,
                       match=r"heads in layer 25 lie beyond .* last layer 23"):
        cut.backend.llm.generate([prompt], params, use_tqdm=False)


def test_heads_beyond_the_cut_fail_in_the_worker_too(cut, requests, monkeypatch):
    # Bypass the front end's admission check (it runs in this process; the engine core and
    # worker run in their own): the worker must still fail the request, naming the layer.
    from qrhead_vllm.backends import MassRequest
    from qrhead_vllm.patches import vllm_0_32
    monkeypatch.setattr(vllm_0_32, "check_request", lambda *a, **k: None)
    req = MassRequest(requests[0].real, None, ((2, 0), (26, 1)))
    with pytest.raises(CaptureError, match=r"heads in layer 26 lie beyond .* last layer 23"):
        cut.backend.attention_mass([req])


def test_generation_is_refused(cut):
    from vllm import SamplingParams
    from vllm.exceptions import VLLMValidationError
    with pytest.raises(VLLMValidationError, match="accepts QRHead scoring requests with "
                                                  "max_tokens=1 only, not generation"):
        cut.backend.llm.generate(["The capital of France is"],
                                 SamplingParams(max_tokens=8), use_tqdm=False)


def test_no_buffers_left_behind(cut):
    assert cut.backend.stats() == [{"active": 0, "done": 0}]


def test_unverified_model_class_is_refused_before_start():
    with pytest.raises(EngineCompatibilityError, match="verified only for LlamaForCausalLM.*"
                                                       "Gemma3ForCausalLM"):
        QRHeadRanker("gemma3-270m", heads=[(0, 0), (5, 1)], backend="vllm", score_only=True)
    with pytest.raises(EngineCompatibilityError, match=r"last_layer=30 is outside .* 0\.\.29"):
        QRHeadRanker("smollm2-135m", heads=HEADS, backend="vllm", last_layer=30)


def test_the_worker_refuses_an_unverified_model_class():
    from types import SimpleNamespace

    from qrhead_vllm.integration.vllm.layer_cut import check_cut
    config = SimpleNamespace(
        model_config=SimpleNamespace(architectures=["Gemma3ForCausalLM"],
                                     get_total_num_hidden_layers=lambda: 18),
        parallel_config=SimpleNamespace(pipeline_parallel_size=1))
    with pytest.raises(EngineCompatibilityError, match="Gemma3ForCausalLM"):
        check_cut(config, 12)


def test_admission_rules_of_a_score_only_engine():
    from types import SimpleNamespace

    from vllm import SamplingParams
    from vllm.exceptions import VLLMValidationError

    from qrhead_vllm.integration.vllm.layer_cut import additional_config, check_request
    from qrhead_vllm.integration.request_spec import RequestSpec
    cut, full = (SimpleNamespace(additional_config=additional_config(LAST)),
                 SimpleNamespace(additional_config={}))
    spec = RequestSpec(10, ((0, 1), (LAST, 2)), "k").as_params()
    check_request(cut, SamplingParams(max_tokens=1, extra_args=spec))          # admitted
    for params in (SamplingParams(max_tokens=16),                             # generation
                   SamplingParams(max_tokens=16, extra_args=spec),            # more than 1 token
                   SamplingParams(max_tokens=1, extra_args=spec, prompt_logprobs=1)):
        with pytest.raises(VLLMValidationError, match="score-only"):
            check_request(cut, params)
        check_request(full, params)                   # a full engine admits all of them
    deep = RequestSpec(10, ((0, 1), (LAST + 1, 2)), "k").as_params()
    with pytest.raises(VLLMValidationError, match=f"layer {LAST + 1} lie beyond"):
        check_request(cut, SamplingParams(max_tokens=1, extra_args=deep))
