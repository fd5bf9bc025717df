"""Speed and memory bench (issue 6, item 2; issue 3's overhead figure): every figure a ratio of
variants run side by side on the same prompts, several repetitions, medians.

    python bench/speed.py                    # CPU default: bundled SmolLM2-135M, fp32, ~20 min
    python bench/speed.py --quick --out /tmp/speed   # a 2-3 minute look at every section

Sections: ``overhead`` (prefill with the capture hook vs ordinary requests on the same engine),
``compare`` (calibration: with vs without the null pass; and our vLLM path vs the transformers
reference port per query), ``scaling`` (time per query vs documents and vs context length),
``memory`` (peak extra bytes of the capture vs context length, from the core's own functions).
Writes ``<out>/speed.md`` and ``<out>/speed_*.png``. One vLLM engine for the whole run, prefix
caching on; the prefix cache is reset before every timed call so no call hits another's blocks
(asserted through ``num_cached_tokens``), except the null pass, whose hit is the point.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # `python bench/speed.py`

from bench import speed_report                                        # noqa: E402
from bench.gpu_capture import Shape, make_layer, ours, peak_bytes, reference  # noqa: E402
from bench.speed_prompts import Item, docs_item, hotpot_items, length_item    # noqa: E402
from bench.speed_timing import Timings, interleave, load_average               # noqa: E402
from qrhead_vllm.datasets import HOTPOTQA, load_hotpotqa                  # noqa: E402
from qrhead_vllm.errors import ContextOverflowError, HeadConfigError  # noqa: E402
from qrhead_vllm.models import DEFAULT_MODEL                          # noqa: E402

SECTIONS = ("memory", "overhead", "compare", "scaling")
# Used when the model has no shipped head config: 16 heads over 10 layers and all 3 KV groups.
FALLBACK_HEADS = [(7, 7), (8, 0), (14, 3), (15, 6), (17, 0), (17, 3), (17, 4), (18, 6),
                  (18, 7), (20, 3), (21, 7), (21, 8), (22, 4), (22, 7), (23, 2), (23, 7)]
QUICK = {"queries": 1, "reps": 1, "overhead_long": 0, "doc_counts": "10,25", "lengths": "1024",
         "mem_lengths": "1024,2048"}


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
    p.add_argument("--doc-counts", default="10,25,50,100,200")
    p.add_argument("--doc-words", type=int, default=15,
                   help="words kept per document in the documents sweep (200 × 15 words: 7.6K "
                   "SmolLM2 tokens)")
    p.add_argument("--lengths", default="1024,2048,4096,8000", help="context-length sweep")
    p.add_argument("--scaling-reps", type=int, default=2)
    p.add_argument("--mem-lengths", default="1024,2048,4096,8192,16384,32768")
    p.add_argument("--max-model-len", type=int, default=8192)
    p.add_argument("--extend-context", action="store_true", help="let the engines run past the "
                   "model's trained positions (max_position_embeddings := --max-model-len): "
                   "timings stay valid, scores do not")
    p.add_argument("--block-size", type=int, default=None, help="vLLM KV block size (CPU default "
                   "128, multiples of 32): the null pass recomputes from the last full block "
                   "before the query span")
    p.add_argument("--memory-fraction", type=float, default=0.15,
                   help="share of host memory vLLM may take for weights + KV cache")
    p.add_argument("--multiprocess", action="store_true",
                   help="engine core in its own process (production layout; slower start)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: " + str(QUICK))
    p.add_argument("--out", default="docs")
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
    skipped: list[str] = field(default_factory=list)


def start_engines(args, run: Run):
    """The vLLM ranker (prompts + engine) and the transformers reference port, same model."""
    if not args.multiprocess:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # 3-5× faster start
    from qrhead_vllm.ranker import QRHeadRanker, make_backend
    kwargs = dict(max_model_len=args.max_model_len, enable_prefix_caching=True,
                  gpu_memory_utilization=args.memory_fraction)
    if args.block_size:
        kwargs["block_size"] = args.block_size
    if args.extend_context:
        kwargs["hf_overrides"] = {"max_position_embeddings": args.max_model_len}
    start = time.perf_counter()
    try:
        ranker = QRHeadRanker(args.model, heads=args.heads, backend="vllm", dtype=args.dtype,
                              **kwargs)
    except HeadConfigError:
        if args.heads is not None:
            raise
        ranker = QRHeadRanker(args.model, heads=FALLBACK_HEADS, backend="vllm",
                              dtype=args.dtype, **kwargs)
    run.facts["vLLM engine start"] = f"{time.perf_counter() - start:.0f} s"
    hf = make_backend("transformers", args.model, args.dtype)
    hf.max_model_len = ranker.backend.max_model_len        # prompts were checked against vLLM's
    run.facts["heads"] = (ranker.heads.name if ranker.heads else "all") + \
        f" ({len(ranker.head_pairs)} heads in {len({l for l, _ in ranker.head_pairs})} layers)"
    return ranker, hf


class HookTimer:
    """Wall time spent inside the capture hook's entry points (in-process engine only: they run
    in this process). Ordinary requests show the lookup they pay; scoring requests the
    capture's own work (gather, self-check, softmax rows), separated from the load's noise."""

    def __init__(self):
        from qrhead_vllm.integration.vllm.capture import CaptureStore
        self.seconds = 0.0
        for name in ("begin_step", "on_attention", "end_step"):
            setattr(CaptureStore, name, self._timed(getattr(CaptureStore, name)))

    def _timed(self, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
        return timed

    def take(self) -> dict[str, float]:
        seconds, self.seconds = self.seconds, 0.0
        return {"hook": seconds}


def vllm_variants(backend, hf, timer: HookTimer | None) -> dict:
    """Callables timing one item each; every one starts from an empty prefix cache."""
    from vllm import SamplingParams
    from qrhead_vllm.integration.vllm.backend import merge_worker_results, scoring_request
    llm, plain_params = backend.llm, SamplingParams(max_tokens=1, temperature=0.0)
    hook = timer.take if timer else dict

    def fresh():
        if not llm.reset_prefix_cache():
            raise RuntimeError("vLLM refused to reset the prefix cache")
        hook()                          # forget hook time spent outside this call

    def no_hits(out):
        if out.num_cached_tokens:       # a hit would make this prefill cheaper than its twin
            raise RuntimeError(f"unexpected prefix-cache hit of {out.num_cached_tokens} tokens")

    def plain(item: Item):
        fresh()
        [out] = llm.generate([{"prompt_token_ids": list(item.request.real.token_ids)}],
                             plain_params, use_tqdm=False)
        no_hits(out)
        return hook()

    def capture(item: Item):
        fresh()
        prompt, params, key = scoring_request(item.request.real, item.request.heads)
        [out] = llm.generate([prompt], params, use_tqdm=False)
        no_hits(out)
        replies = llm.collective_rpc("qrhead_pop", args=([key],))
        merge_worker_results(replies, key, len(item.request.heads))  # raises if it is missing
        return hook()

    def real(item: Item):
        fresh()
        backend.attention_mass([item.without_null()])
        return hook()

    def real_null(item: Item):
        fresh()
        [mass] = backend.attention_mass([item.request])
        if not mass.null_cached_tokens:
            raise RuntimeError("the null pass missed the prefix cache")
        return hook()

    def transformers(item: Item):
        hf.attention_mass([item.request])

    return {"plain": plain, "capture": capture, "real": real, "real+null": real_null,
            "transformers": transformers}


def run_engine_sections(args, run: Run, sections: set[str]) -> None:
    ranker, hf = start_engines(args, run)
    v = vllm_variants(ranker.backend, hf, None if args.multiprocess else HookTimer())
    examples = load_hotpotqa(HOTPOTQA)
    hot = hotpot_items(ranker, examples, args.queries)
    if "overhead" in sections:
        items = hot + ([length_item(ranker, examples, args.overhead_long, start=40)]
                       if args.overhead_long else [])
        run.timings["overhead"] = interleave({k: v[k] for k in ("plain", "capture")}, items,
                                             args.reps, "overhead")
    if "compare" in sections:
        run.timings["compare"] = interleave({k: v[k] for k in ("real", "real+null",
                                                                "transformers")},
                                            hot, args.reps, "compare")
    if "scaling" in sections:
        docs = []
        for n in ints(args.doc_counts):
            try:
                docs.append(docs_item(ranker, examples, n, args.doc_words))
            except (ContextOverflowError, ValueError) as e:
                run.skipped.append(f"{n} documents: {e}")
        run.timings["docs"] = interleave({k: v[k] for k in ("real+null", "transformers")},
                                         docs, args.scaling_reps, "docs")
        lengths = [length_item(ranker, examples, t, start=10 + 7 * i)
                   for i, t in enumerate(ints(args.lengths))]
        run.timings["lengths"] = interleave({k: v[k] for k in ("real+null", "plain",
                                                                "transformers")},
                                            lengths, args.scaling_reps, "lengths")
    ranker.close()
    hf.close()


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
    run = Run(args, " ".join(["python bench/speed.py"] + ([shlex.join(argv)] if argv else [])))
    run.facts["load average at start"] = f"{load_average():.1f}"
    sections = set(args.sections.split(","))
    started = time.perf_counter()
    if "memory" in sections:
        run_memory(args, run)
    if sections & {"overhead", "compare", "scaling"}:
        run_engine_sections(args, run, sections)
    run.facts["load average at end"] = f"{load_average():.1f}"
    run.facts["wall time"] = f"{(time.perf_counter() - started) / 60:.1f} min"
    path = speed_report.write(run, Path(args.out), args.name,
                              Path(args.notes) if args.notes else None)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
