"""Decode-time capture in vLLM against the transformers port (the oracle), on the real bundled
SmolLM2 in fp32, through the serve-side API (``AsyncVLLMBackend.generate_scored``).

* greedy generation of 24 tokens after a 5-document prompt, batched with a second generating
  request that starts once the first is decoding (so it prefills beside the first one's decode
  steps and hits its documents in the prefix cache) and with an ordinary one: each request's
  ``[G, H, N]`` equals the port's teacher-forced one to 1e-5;
* the prefill scores of a generating request equal those of the 1-token scoring request;
* a generation cancelled mid-decode leaves nothing in the workers.

One AsyncLLM for the module (multiprocess engine core, plugin loaded by the worker through its
entry point, as in production), driven from one event loop.
"""

from __future__ import annotations

import asyncio

import pytest
import torch

from qrhead_vllm.backends import MassRequest
from qrhead_vllm.core import TEMPLATES, Passage, build_scoring_prompts, score_documents
from tests.async_engine import async_smollm2, engine_loop  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow
# Heads spread over early, middle and last layers and over all three KV groups of SmolLM2.
HEADS = ((2, 0), (5, 4), (9, 8), (14, 1), (17, 5), (22, 7), (29, 3))
TOKENS = 24
ATOL = 1e-5


@pytest.fixture(scope="module")
def backend(async_smollm2):
    return async_smollm2


def prompts(tokenizer, example, question=None, docs=5):
    passages = [Passage(d.text, d.title) for d in list(example.documents)[:docs]]
    return build_scoring_prompts(tokenizer, TEMPLATES["chatml"], question or example.query,
                                 passages)


def greedy(max_tokens=TOKENS):
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True,
                          output_kind=RequestOutputKind.DELTA)


async def run(gen, after=None):
    """Drain a generation (setting ``after`` once it produced its first output)."""
    last = None
    async for out in gen:
        last = out
        if after is not None:
            after.set()
    return last


def test_decode_mass_equals_the_port_batched_and_after_a_prefix_hit(backend, engine_loop,
                                                                    smollm2_backend,
                                                                    hotpotqa_split):
    example = hotpotqa_split[1][0]
    first, _ = prompts(backend.tokenizer, example)
    second, _ = prompts(backend.tokenizer, example, "Which of these paragraphs is the oldest?")
    assert first.token_ids[:first.query_start] == second.token_ids[:second.query_start]

    async def scenario():
        from vllm import SamplingParams
        await backend.engine.reset_prefix_cache()
        a = backend.generate_scored(first, greedy(), HEADS, decode=True)
        b = backend.generate_scored(second, greedy(), HEADS, decode=True)
        decoding = asyncio.Event()
        plain = backend.engine.generate({"prompt": "The capital of France is"},
                                        SamplingParams(max_tokens=TOKENS, temperature=0.0),
                                        request_id="plain")
        task_a = asyncio.ensure_future(run(a, decoding))
        await decoding.wait()              # a is decoding: b prefills beside its decode steps
        last_b, last_a, _ = await asyncio.gather(run(b), task_a, run(plain))
        return (await a.decode_mass(), await b.decode_mass(), last_b.num_cached_tokens,
                await a.prefill(), await b.prefill())

    dm_a, dm_b, hit_b, _, _ = engine_loop.run_until_complete(scenario())
    assert hit_b >= first.query_start // 128 * 128 > 0      # b's documents came from the cache
    for prompt, dm in ((first, dm_a), (second, dm_b)):
        assert dm.mass.shape == (TOKENS, len(HEADS), len(prompt.doc_spans))
        want = smollm2_backend.decode_mass(prompt.token_ids, dm.token_ids, HEADS,
                                           prompt.doc_spans)
        assert (dm.mass - want).abs().max() <= ATOL
        assert dm.mass.sum(-1).max() <= 1 + ATOL and dm.mass.min() >= 0
    assert engine_loop.run_until_complete(backend.stats_async()) == [{"active": 0, "done": 0}]


def test_prefill_of_a_generating_request_equals_the_scoring_request(backend, engine_loop,
                                                                    hotpotqa_split):
    real, null = prompts(backend.tokenizer, hotpotqa_split[1][1])

    async def scenario():
        gen = backend.generate_scored(real, greedy(8), HEADS, null=null, decode=True)
        await run(gen)
        await gen.decode_mass()
        [scoring] = await backend.attention_mass_async([MassRequest(real, null, HEADS)])
        return await gen.prefill(), scoring

    got, want = engine_loop.run_until_complete(scenario())
    assert (got.real - want.real).abs().max() <= ATOL
    assert (got.null - want.null).abs().max() <= ATOL
    assert got.null_cached_tokens >= real.query_start // 128 * 128 > 0   # the null pass is cheap
    scores = score_documents(got.real, got.null, real.doc_spans)
    assert (scores - score_documents(want.real, want.null, real.doc_spans)).abs().max() <= ATOL
    assert engine_loop.run_until_complete(backend.stats_async()) == [{"active": 0, "done": 0}]


def test_rows_so_far_then_a_cancel_mid_decode_leaves_nothing(backend, engine_loop,
                                                              smollm2_backend, hotpotqa_split):
    real, null = prompts(backend.tokenizer, hotpotqa_split[1][2])

    async def scenario():
        gen = backend.generate_scored(real, greedy(400), HEADS, null=null, decode=True)
        outputs = 0
        async for _ in gen:
            outputs += 1
            if outputs == 3:       # while it decodes: what streamed citations read
                so_far = await gen.decode_mass_so_far()
                assert (await backend.stats_async())[0]["active"] >= 1   # still captured
                break              # the client goes away
        await gen.aclose()
        # the workers learn of the abort with the next step
        async for _ in backend.engine.generate({"prompt": "Hello"}, greedy(1), request_id="h"):
            pass
        return so_far, await backend.stats_async()

    so_far, stats = engine_loop.run_until_complete(scenario())
    assert stats == [{"active": 0, "done": 0}]
    assert so_far.mass.shape == (3, len(HEADS), len(real.doc_spans))
    want = smollm2_backend.decode_mass(real.token_ids, so_far.token_ids, HEADS, real.doc_spans)
    assert (so_far.mass - want).abs().max() <= ATOL


def test_n_above_one_is_refused(backend, hotpotqa_split):
    from vllm import SamplingParams
    real, _ = prompts(backend.tokenizer, hotpotqa_split[1][0])
    with pytest.raises(ValueError, match="n=1"):
        backend.generate_scored(real, SamplingParams(n=2, max_tokens=4), HEADS, decode=True)

