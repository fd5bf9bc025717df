"""Smoke tests of the speed bench's parts (no vLLM engine: that is the bench's own job).

The GPU bench's two computations must agree (it compares the same maths), the memory formula
must match what the profiler measures, the timing helper must pair and rotate variants, the
prompt builders must hit their sizes with the real tokenizer, and the report must render.
"""

from __future__ import annotations

import argparse
import itertools
from types import SimpleNamespace

import pytest
import torch

from bench.speed import gpu_capture, report as speed_report
from bench.speed.gpu_capture import Shape, make_layer, ours, peak_bytes
from bench.speed.speed import FALLBACK_HEADS, Run
from bench.speed.prompts import Item, docs_item, length_item
from bench.speed.timing import interleave

SMALL = Shape("small", 4, 8, 2, 16, ((1, 0), (1, 5), (3, 2), (3, 3), (3, 6)))
SMOLLM = Shape("smollm-like", 30, 9, 3, 64, tuple(FALLBACK_HEADS))


def test_capture_maths_equals_the_reference_recompute():
    layer = make_layer(SMALL, 300, 20, 16, torch.float32, "cpu")
    assert gpu_capture.check_same_maths(SMALL, layer) < 1e-6
    assert gpu_capture.reference(SMALL, layer).shape == (4, 8, 300)


def test_gpu_bench_runs_on_cpu(capsys):
    gpu_capture.main(["--device", "cpu", "--shapes", "8b", "--tokens", "256", "--reps", "1"])
    out = capsys.readouterr().out
    assert "| Llama-3.1-8B | 256 | 16 (5) |" in out


@pytest.mark.parametrize("tokens", [1000, 4096])
def test_memory_formula_matches_the_measured_peak(tokens):
    layer = make_layer(SMOLLM, tokens, 50, 128, torch.float32, "cpu")
    measured = peak_bytes(lambda: ours(SMOLLM, layer), "cpu")
    predicted = speed_report.capture_bytes(SMOLLM, tokens, 50, 128)
    assert abs(measured - predicted) / measured < 0.05


def _item(label: str, tokens: int) -> Item:
    return Item(label, SimpleNamespace(real=SimpleNamespace(num_tokens=tokens)), 1)


def test_interleave_pairs_and_rotates_variants():
    now, calls = {"wall": 0.0, "cpu": 0.0}, []

    def variant(name, cost):
        def run(item):
            calls.append(name)
            now["wall"] += cost
            now["cpu"] += 2 * cost * item.tokens      # CPU time may differ from wall time
        return run
    items = [_item("a", 10), _item("b", 20)]
    t = interleave({"x": variant("x", 3), "y": variant("y", 1)}, items, reps=2, title="t",
                   clock=lambda: now["wall"], cpu_clock=lambda: now["cpu"])
    assert calls[:2] == ["x", "y"]                       # warm-up, not timed
    assert calls[2:] == ["x", "y", "y", "x", "y", "x", "x", "y"]
    assert t.ratios("x", "y") == [3.0, 3.0, 3.0, 3.0]
    assert t.cpu["x"]["b"] == [120.0, 120.0] and t.ratio("x", "y", kind="cpu").median == 3.0


@pytest.fixture(scope="module")
def prompt_ranker(bundled_model_path):
    """A ranker whose backend has the real tokenizer and config but no weights."""
    from transformers import AutoConfig, AutoTokenizer
    from qrhead_vllm.heads import ModelFacts
    from qrhead_vllm.ranker import QRHeadRanker
    path = bundled_model_path("smollm2-135m")
    cfg = AutoConfig.from_pretrained(path)
    backend = SimpleNamespace(tokenizer=AutoTokenizer.from_pretrained(path), hf_config=cfg,
                              facts=ModelFacts.from_hf_config(cfg, "smollm2"),
                              max_model_len=8192, last_layer=None, close=lambda: None)
    return QRHeadRanker("smollm2-135m", backend=backend)


def test_prompts_fit_their_targets(prompt_ranker, hotpotqa_split):
    examples = hotpotqa_split[0] + hotpotqa_split[1]
    item = length_item(prompt_ranker, examples, 4096, start=3)
    assert 3800 <= item.tokens <= 4096 and item.request.null.num_tokens <= 4096
    # The calibration lengths get distinct labels (timings are keyed by label).
    labels = [length_item(prompt_ranker, examples, t).label for t in (1024, 1536, 2048)]
    assert labels == ["1K", "1.5K", "2K"]
    assert docs_item(prompt_ranker, examples, 150, 15).tokens <= 8192   # 160 docs vendored
    with pytest.raises(ValueError, match="only 160 documents"):
        docs_item(prompt_ranker, examples, 200, 15)


def test_report_renders(tmp_path):
    from bench.speed.bf16 import Bf16Quality
    items = [_item("hotpot-1", 1400), _item("4K", 4000)]
    ticks = itertools.count()
    timings = interleave({"plain": lambda i: {"hook": 0.001}, "capture": lambda i: None}, items,
                         2, "t", clock=ticks.__next__, cpu_clock=ticks.__next__)
    costs = {"real": 10, "early": 11, "full": 13, "transformers": 20, "reference": 40}
    now = {"t": 0.0}

    def cost(name):
        def run(item):
            now["t"] += costs[name]
        return run
    compare = interleave({k: cost(k) for k in costs}, items[:1], 2, "c",
                         clock=lambda: now["t"], cpu_clock=lambda: now["t"])
    args = argparse.Namespace(model="m", dtype="float32", max_model_len=8192,
                              extend_context=False, multiprocess=False, doc_words=15,
                              scaling_reps=1)
    run = Run(args, "python bench/speed/speed.py", timings={"overhead": timings, "compare": compare},
              memory=[{"tokens": 1024, "ours": 2 ** 20, "formula": 2 ** 20, "kv_cache": 2 ** 25,
                       "reference": 2 ** 23},
                      {"tokens": 2048, "ours": 2 ** 21, "formula": 2 ** 21, "kv_cache": 2 ** 26}],
              engine_memory=[{"engine": "full model", "dtype": "float32", "attention_layers": 30,
                              "weight_bytes": 100 * 2 ** 20, "kv_cache_bytes": 100 * 2 ** 20},
                             {"engine": "score-only", "dtype": "float32", "attention_layers": 24,
                              "weight_bytes": 80 * 2 ** 20, "kv_cache_bytes": 80 * 2 ** 20}],
              cut=(23, 30), bf16=Bf16Quality(35, 0.01, 0.001, 0.95, 0.8, 30, 35, 83.2, 83.0,
                                             (-0.9, 0.5)))
    text = speed_report.write(run, tmp_path).read_text()
    assert "| capture overhead, hook on / off (HotpotQA prompts, 1400 tokens) | 1.000" in text
    assert "| hotpot-1 | 1400 | 1 | 2.00 | 2.00 | 1.000 / 1.000 | 1.0 |" in text   # hook: plain only
    assert ("| early exit: score-only engine (layers 0..23) / full model (30 layers), real + "
            "null | 0.846") in text and "≤ 1.1 × 24/30 = 0.880 | yes / yes / yes |" in text
    assert "| calibration overhead, with / without the null pass" in text
    assert "| **reference algorithm / our vLLM path** (score-only engine), per query | 3.636" \
        in text
    assert "| score-only | float32 | 24 | 80 | 80 | 160 | 0.800 |" in text
    assert "| 35 | 1.00e-02 | 1.00e-03 | 0.950 / 0.800 | 30/35 | 35/35 | 83.2 | 83.0 | -0.2 " \
        "[-0.9, +0.5] | yes |" in text
    assert "not been run on a GPU yet" in text
    assert (tmp_path / "speed_memory.png").stat().st_size > 0


def test_bf16_comparison_metrics():
    from bench.speed.bf16 import bootstrap_interval, kendall_tau_b, ndcg_at_10
    assert kendall_tau_b([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau_b([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert kendall_tau_b([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)

    assert ndcg_at_10(["a", "b", "c"], frozenset({"a", "b"})) == 1.0
    assert ndcg_at_10(["c", "a", "b"], frozenset({"a", "b"})) == pytest.approx(
        (1 / 1.5849625 + 1 / 2) / (1 + 1 / 1.5849625))
    lo, hi = bootstrap_interval([0.0] * 34 + [-0.2], reps=2000)
    assert lo < 0 and hi == 0.0          # one worse query: the interval reaches 0, not above
    lo, hi = bootstrap_interval([-0.1] * 35, reps=200)
    assert lo == hi == pytest.approx(-0.1)


def test_reference_algorithm_scores_equal_our_port(smollm2_backend, hotpotqa_split):
    """The bench's reference baseline (full forward, all L×H heads recomputed with a dense
    mask, heads selected last) computes the same scores as our port (which the vLLM hook
    equals, tests/test_vllm_hook.py), so the speed-up compares like with like."""
    from bench.speed.reference_baseline import ReferenceAlgorithm
    from qrhead_vllm.models import resolve_model
    from qrhead_vllm.ranker import QRHeadRanker
    model = resolve_model("smollm2-135m")
    reference = QRHeadRanker("smollm2-135m", backend=ReferenceAlgorithm(model.path,
                                                                       model.model_id))
    port = QRHeadRanker("smollm2-135m", backend=smollm2_backend)
    for e in hotpotqa_split[1][:2]:
        _, req = port.prepare(e.query, list(e.documents))
        [ref], [ours] = reference.backend.attention_mass([req]), port.backend.attention_mass([req])
        assert (ref.real - ours.real).abs().max() <= 1e-5
        assert (ref.null - ours.null).abs().max() <= 1e-5
        want, got = port.rank(e.query, list(e.documents)), reference.rank(e.query,
                                                                          list(e.documents))
        assert [r.doc_id for r in got] == [r.doc_id for r in want]
        assert max(abs(a.score - b.score) for a, b in zip(got, want)) <= 1e-5
    reference.close()


def test_reference_algorithm_recomputes_every_head_of_every_layer():
    from bench.speed.reference_baseline import all_heads_rows
    from transformers import DynamicCache
    cache, queries = DynamicCache(), {"span": 3}
    for layer in range(4):
        cache.update(torch.randn(1, 2, 10, 8), torch.randn(1, 2, 10, 8), layer)
        queries[layer] = torch.randn(1, 6, 3, 8)
    rows = all_heads_rows(queries, cache, 4)
    assert rows.shape == (4, 6, 10)
    assert torch.allclose(rows.sum(-1), torch.ones(4, 6))             # mean of softmax rows
    # Layer 0 by hand: span rows at positions 7, 8, 9 (causal), GQA head h reads KV head h // 3.
    keys = cache.layers[0].keys[0]
    for h in range(6):
        want = torch.zeros(10)
        for row, pos in enumerate(range(7, 10)):
            logits = queries[0][0, h, row] @ keys[h // 3, :pos + 1].T / 8 ** 0.5
            want[:pos + 1] += torch.softmax(logits, -1) / 3
        assert torch.allclose(rows[0, h], want, atol=1e-6)


def test_rank_agreement_averages_taus_and_finds_the_largest_difference():
    from bench.speed.bf16 import rank_agreement
    mean, lowest, worst = rank_agreement([([1, 2, 3], [1, 2, 3.5]), ([1, 2, 3], [3, 2, 1])])
    assert (mean, lowest) == (0.0, -1.0) and worst == 2.0
