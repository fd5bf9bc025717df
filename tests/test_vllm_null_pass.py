"""What the null (calibration) pass computes on the Serve path, on a real vLLM engine.

``AsyncVLLMBackend`` submits each query's real and null prompts together; whichever vLLM
schedules second is served from the first one's prefix-cache blocks. The prefix cache shares
whole KV blocks only, so the null pass computes its own query span plus the document tokens
after the last full block before it: ``null.query_len + query_start % block_size`` tokens,
never more, even with other queries' passes in the same engine steps. That count is what
docs/results/calibration_cost.md reports against issue 26's bar (<= 2 % of the prompt).
"""

from __future__ import annotations

import pytest

from qrhead_vllm.ranker import QRHeadRanker
from tests.async_engine import async_smollm2, engine_loop  # noqa: F401 (fixtures)

HEADS = [(2, 0), (9, 8), (17, 5), (22, 7)]
DOCS = 20


@pytest.fixture(scope="module")
def ranker(async_smollm2):
    return QRHeadRanker("smollm2-135m", heads=HEADS, backend=async_smollm2)


def twenty_document_requests(ranker, examples, count):
    """``count`` rerank requests of 20 passages (two records' candidates, the first's query)."""
    out = []
    for i in range(count):
        a, b = examples[2 * i], examples[2 * i + 1]
        docs = (list(a.documents) + list(b.documents))[:DOCS]
        assert len(docs) == DOCS
        out.append(ranker.prepare(a.query, docs)[1])
    return out


@pytest.mark.slow
def test_null_pass_computes_its_span_and_the_partial_block_only(ranker, engine_loop,
                                                                 hotpotqa_split):
    backend = ranker.backend
    block = backend.engine.vllm_config.cache_config.block_size
    reqs = twenty_document_requests(ranker, hotpotqa_split[1], 3)

    async def first_time_rerank():
        await backend.engine.reset_prefix_cache()
        return await backend.attention_mass_async(reqs)   # 6 passes in flight together

    got = engine_loop.run_until_complete(first_time_rerank())
    for res, req in zip(got, reqs):
        computed = req.null.num_tokens - res.null_cached_tokens
        assert computed == req.null.query_len + req.real.query_start % block
        assert computed < req.null.query_len + block
    assert engine_loop.run_until_complete(backend.stats_async()) == [{"active": 0, "done": 0}]
