"""What the null (calibration) pass computes on SGLang's Serve path (the async backend).

SGLang's radix cache on CPU is token-granular (page size 1), and ``attention_mass_async`` runs
the null pass after the real one: the null computes its own query span and nothing else, for a
prompt of any length (28 SmolLM2 tokens: 1.1-1.9 % of a 20-passage DL19 prompt, under issue
26's 2 % bar; docs/results/calibration_cost.md).
"""

from __future__ import annotations

import pytest

from qrhead_vllm.integration.sglang.backend import run_in_engine_loop
from qrhead_vllm.ranker import QRHeadRanker
from sglang_helpers import SMOLLM2_HEADS

pytestmark = pytest.mark.slow


def test_async_null_pass_computes_its_span_only(sglang_smollm2, hotpotqa_split):
    backend = sglang_smollm2.backend
    ranker = QRHeadRanker("smollm2-135m", heads=SMOLLM2_HEADS, backend=backend)
    # Few documents: SGLang's CPU attention makes long prompts cost minutes here; the count
    # does not depend on the length (token-granular cache).
    reqs = [ranker.prepare(e.query, list(e.documents)[:3])[1] for e in hotpotqa_split[1][6:8]]
    assert backend.engine.flush_cache().success
    got = run_in_engine_loop(backend, backend.attention_mass_async(reqs))
    for res, req in zip(got, reqs):
        assert res.null_cached_tokens == req.real.query_start > 0
        assert req.null.num_tokens - res.null_cached_tokens == req.null.query_len
