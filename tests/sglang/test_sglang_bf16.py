"""SGLang's CPU path in bf16 (issue 19): the ``torch_native`` engine in bfloat16 ranks DL19
top-20 queries as the transformers port does in bfloat16.

bf16 rounding differs between SGLang's attention and the port's, so rows are not equal to
1e-4 as in fp32 (test_sglang_hook.py); the ranking is what must hold, with the bar the vLLM
AMX test started with (tests/test_vllm_amx.py): mean Kendall tau >= 0.98, none under 0.9.
SGLang's AMX attention backend (``intel_amx``) needs sgl-kernel's CPU build, which PyPI does
not have (its wheels are CUDA-only), so it is not tried here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.speed.bf16 import agreement_with_port
from qrhead_vllm.datasets import load_shared
from qrhead_vllm.ranker import QRHeadRanker

pytestmark = pytest.mark.slow
DL19_TOP20 = Path(__file__).resolve().parents[1] / "data" / "dl19-top20.jsonl"
QUERIES = 10


def test_torch_native_bf16_ranks_dl19_as_the_port_in_bf16():
    engine = QRHeadRanker("smollm2-135m", backend="sglang", dtype="bfloat16",
                          max_model_len=4096, chunked_prefill_size=4096)

    def runs_in_bf16(engine):
        assert engine.backend.engine.server_args.dtype == "bfloat16"
    mean, lowest, _ = agreement_with_port(engine, "smollm2-135m",
                                          load_shared(DL19_TOP20)[:QUERIES],
                                          "sglang torch_native", runs_in_bf16)
    assert mean >= 0.98 and lowest >= 0.9
