"""The SGLang engine hook against the transformers reference port, on the real bundled SmolLM2.

Equivalence (fp32, max abs diff <= 1e-4, identical rankings) in each engine situation the hook
must survive: one-step prefill; chunked prefill whose chunks split the documents and the query
span; a warm radix-cache hit and an exact repeat; 8 scoring requests batched; scoring in the
same engine steps as ordinary generation. Plus: the null pass is served from the radix cache
up to the span start, an aborted request leaves nothing in the scheduler, a malformed request
fails alone, and the async path gives the same rows.

One real SGLang engine for the session (``sglang_smollm2``), its scheduler in its own process
loading the plugin through the ``sglang.srt.plugins`` entry point, as in production.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from qrhead_vllm.backends import MassRequest
from qrhead_vllm.errors import CaptureError
from qrhead_vllm.integration.sglang.backend import run_in_engine_loop, scoring_request
from qrhead_vllm.integration.sglang.results import decode_result
from qrhead_vllm.ranker import QRHeadRanker
from sglang_helpers import SMOLLM2_HEADS, assert_equivalent, cold_then_warm_hits, max_diff

pytestmark = pytest.mark.slow
CHUNK = 512


@pytest.fixture(scope="module")
def reference(smollm2_backend):
    return QRHeadRanker("smollm2-135m", heads=SMOLLM2_HEADS, backend=smollm2_backend)


@pytest.fixture(scope="module")
def examples(hotpotqa_split):
    return hotpotqa_split[1][:8]


def _requests(ranker, examples, num_docs=None):
    """Scoring requests of real records; ``num_docs`` keeps the first few documents (SGLang's
    CPU attention recomputes the whole prefix at every chunk: full prompts cost minutes here,
    so only the tests about long prompts use them)."""
    return [ranker.prepare(e.query, list(e.documents)[:num_docs])[1] for e in examples]


def _want(reference, req):
    [want] = reference.backend.attention_mass([req])
    return want


def test_one_step_prefill(sglang_smollm2, reference, examples):
    # Two documents: the whole prompt fits one 512-token step.
    req = reference.prepare(examples[0].query, list(examples[0].documents)[:2])[1]
    assert req.real.num_tokens < CHUNK
    [got] = sglang_smollm2.backend.attention_mass([req])
    assert_equivalent(got, _want(reference, req), req)


def test_chunked_prefill_splits_the_query_span(sglang_smollm2, reference, examples):
    reqs = _requests(reference, examples)
    straddling = [r for r in reqs if r.real.query_start // CHUNK != (r.real.num_tokens - 1) // CHUNK]
    assert straddling, "no prompt whose query span crosses a chunk boundary"
    for req in straddling[:2]:
        [got] = sglang_smollm2.backend.attention_mass([req])
        assert_equivalent(got, _want(reference, req), req)


def test_null_pass_is_served_from_the_radix_cache(sglang_smollm2, reference, examples):
    req = _requests(reference, examples[3:4], num_docs=4)[0]
    [got] = sglang_smollm2.backend.attention_mass([req])
    # Token-granular radix cache: every token before the query span is a hit, none after it.
    assert got.null_cached_tokens == req.real.query_start > 0


def test_warm_prefix_hit_then_full_repeat(sglang_smollm2, reference, examples):
    req = _requests(reference, examples[4:5], num_docs=4)[0]
    want = _want(reference, req)
    backend = sglang_smollm2.backend
    # Cold, then a radix hit capped at the span start (never inside it: its rows are needed).
    assert cold_then_warm_hits(backend, req, want) == [0, req.real.query_start]
    [got] = backend.attention_mass([req])
    assert_equivalent(got, want, req)


def test_eight_requests_batched(sglang_smollm2, reference, examples):
    # Three documents per query (~400-500 tokens): one 512-token step holds parts of two
    # requests, so rows of several scoring requests share steps.
    reqs = _requests(reference, examples, num_docs=3)
    got = sglang_smollm2.backend.attention_mass(reqs)
    for g, req in zip(got, reqs):
        assert_equivalent(g, _want(reference, req), req)


def test_interleaved_with_generation(sglang_smollm2, reference, examples):
    engine = sglang_smollm2.backend.engine
    req = _requests(reference, examples[5:6], num_docs=3)[0]
    ids, params, rid = scoring_request(req.real, req.heads)
    chat = {"max_new_tokens": 16, "temperature": 0.0}
    # Ordinary prompts and the scoring prefill submitted as one batch: the same engine steps.
    tok = sglang_smollm2.backend.tokenizer
    plain = tok("The capital of France is")["input_ids"]
    outs = engine.generate(input_ids=[plain] * 3 + [ids], sampling_params=[chat] * 3 + [params])
    assert all(o["meta_info"]["completion_tokens"] == 16 for o in outs[:3])
    assert not any(o["meta_info"].get("qrhead") and any(o["meta_info"]["qrhead"])
                   for o in outs[:3]), "an ordinary request got a capture"
    rows = decode_result(outs[3]["meta_info"], len(req.heads))
    want = reference.backend.attention_mass([MassRequest(req.real, None, req.heads)])[0]
    assert max_diff(rows, want.real) <= 1e-4


def test_async_path_matches(sglang_smollm2, reference, examples):
    docs = list(examples[6].documents)[:4]
    want = reference.rank(examples[6].query, docs)
    got = run_in_engine_loop(sglang_smollm2.backend,
                             sglang_smollm2.rank_async(examples[6].query, docs))
    assert [r.doc_id for r in got] == [r.doc_id for r in want]
    assert max(abs(a.score - b.score) for a, b in zip(got, want)) <= 1e-4


def test_malformed_request_fails_alone(sglang_smollm2, reference, examples):
    good = _requests(reference, examples[7:8], num_docs=3)[0]
    bad = MassRequest(good.real, None, ((99, 0),))          # no layer 99 in SmolLM2
    backend = sglang_smollm2.backend
    with pytest.raises(CaptureError, match="do not exist in this model"):
        backend.attention_mass([bad])
    [got] = backend.attention_mass([good])                  # the engine still scores
    assert_equivalent(got, _want(reference, good), good)


def test_abort_mid_prefill_leaves_nothing(sglang_smollm2, reference, examples):
    backend = sglang_smollm2.backend
    # All documents of two records (~2.9K tokens): 6 chunks, so the scheduler holds the
    # capture across steps; cancel the request before its last chunk.
    docs = [d for e in examples[:2] for d in e.documents]
    req = reference.prepare(examples[0].query, docs)[1]
    assert 4 * CHUNK < req.real.num_tokens < 4096

    async def abort_midway():
        task = asyncio.ensure_future(backend.attention_mass_async([req]))
        deadline = time.monotonic() + 600
        while (await backend.stats_async())["active"] == 0:
            assert time.monotonic() < deadline and not task.done(), "never seen mid-prefill"
            await asyncio.sleep(0.05)
        task.cancel()                                       # -> abort_request in the engine
        with pytest.raises(asyncio.CancelledError):
            await task
        deadline = time.monotonic() + 120
        while (await backend.stats_async())["active"]:
            assert time.monotonic() < deadline, "the aborted capture was never dropped"
            await asyncio.sleep(0.1)

    run_in_engine_loop(backend, abort_midway())
    assert backend.stats() == {"active": 0}


def test_no_capture_state_left_behind(sglang_smollm2):
    assert sglang_smollm2.backend.stats() == {"active": 0}
