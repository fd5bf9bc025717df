"""Long-context bench (issue 19): in-engine capture against the alternatives, side by side in
one run, at 4K-32K tokens on Qwen2.5-Coder-1.5B (bf16 where the CPU has it natively).

    nice -n 15 python bench/speed/long_context.py --lengths 4096 --out docs/results/
    python bench/speed/long_context.py --lengths 32000 --skip transformers --out docs/results/ \
        --name long_context_32k           # 32K on 24 GiB: leave the port out (60 min here)

Variants (bench/speed_engines.py; every vLLM one starts from an empty prefix cache):

    plain        an ordinary vLLM prefill of the real prompt (max_tokens=1), whole model
    capture      the same prefill as a scoring request (heads captured), whole model
    real         score-only engine, real prompt only
    score-only   score-only engine, real + null (calibrated): the fast path
    transformers our transformers port (real + null)
    reference    the published algorithm (bench/reference_baseline.py)

Per variant: wall time (median of ``--reps``), and the peak RSS the call adds on top of the
process before it (sampled every 10 ms; engines run in this process). The static memory of each
vLLM engine (weights, KV cache) is listed apart. Targets (README): capture / plain <= 1.05,
score-only / real <= 1.10 (calibration), reference / score-only >= 3, capture memory (its own
tensors, from shapes: ``capture_bytes``) a small fraction (<= 10 %) of the KV cache.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))   # `python bench/speed/...`

from bench.speed.gpu_capture import Shape                                   # noqa: E402
from bench.report import git_commit, machine, now                     # noqa: E402
from bench.speed.engines import (HookTimer, attention_isas, engine_memory,  # noqa: E402
                                 start_engines, variants)
from bench.speed.prompts import length_item                           # noqa: E402
from bench.speed.report import capture_bytes                          # noqa: E402
from bench.speed.timing import interleave                             # noqa: E402
from qrhead_vllm.datasets import load_hotpotqa                        # noqa: E402
from qrhead_vllm.dtypes import resolve_dtype                          # noqa: E402

MODEL = "qwen2.5-coder-1.5b"
# bench name -> variant in bench/speed_engines.variants
VARIANTS = {"plain": "plain", "capture": "capture", "real": "real", "score-only": "early",
            "transformers": "transformers", "reference": "reference"}
# (label, numerator, denominator, bound, "<=" or ">=")
TARGETS = (("capture overhead", "capture", "plain", 1.05, "<="),
           ("calibration", "score-only", "real", 1.10, "<="),
           ("published algorithm / score-only", "reference", "score-only", 3.0, ">="))
CAPTURE_FRACTION = 0.10
GiB = 2**30


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=MODEL)
    p.add_argument("--heads", default=None, help="default: the model's shipped head set")
    # 32000, not 32768: the engines are sized for the longest prompt + 256 tokens, and the 1.5B
    # is trained for 32768 positions
    p.add_argument("--lengths", default="4096,8192,16384,32000", help="prompt tokens")
    p.add_argument("--dtype", default="auto", help="auto: bf16 where the CPU has it natively")
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--skip", default="", help="comma list of variants to leave out; "
                   "transformers and reference also free their copy of the weights (32K on 24 "
                   "GiB: one of the two)")
    p.add_argument("--note", default="", help="a line on the conditions (e.g. the box's load)")
    p.add_argument("--out", default=None, help="directory for NAME.md")
    p.add_argument("--name", default="long_context", help="file name of the report")
    args = p.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    args.dtype = resolve_dtype(args.dtype)
    args.lengths = [int(x) for x in args.lengths.split(",")]
    # what bench/speed_engines.start_engines reads
    args.max_model_len = max(args.lengths) + 256
    args.kv_cache_sequences, args.block_size, args.extend_context = 2, None, False
    args.multiprocess = False
    return args


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """Peak RSS above the level at entry, sampled on a thread while the block runs."""

    def __enter__(self):
        self.base = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def added(self) -> int:
        return self.peak - self.base


def with_rss(fn):
    def run(item):
        with PeakRss() as rss:
            extra = fn(item) or {}
        return {**extra, "rss": rss.added / GiB}
    return run


def main(argv=None) -> None:
    args = parse_args(argv)
    skip = {s for s in args.skip.split(",") if s}
    facts = {"command": f"`python bench/speed/long_context.py {shlex.join(args.argv)}`",
             "machine": machine(), "dtype": args.dtype, "when": now(), "commit": git_commit(),
             **({"note": args.note} if args.note else {})}
    engines = start_engines(args, facts, bf16=False, reference="reference" not in skip,
                            port="transformers" not in skip)
    facts["CPU attention ISA"] = ", ".join(sorted(attention_isas(engines.full)))
    examples = load_hotpotqa()                  # the shared HotpotQA file
    items = [length_item(engines.full, examples, n, start=i) for i, n in enumerate(args.lengths)]
    v = variants(engines, HookTimer())
    timed = {name: with_rss(v[key]) for name, key in VARIANTS.items()
             if name not in skip and key in v}
    timings = interleave(timed, items, args.reps, "long-context", warmup=False)
    memory = engine_memory(engines)
    shape = Shape(args.model, *_shape_of(engines.full), tuple(engines.full.head_pairs))
    block = engines.early.backend.llm.llm_engine.vllm_config.cache_config.block_size
    engines.close()
    text = report(args, facts, timings, items, memory, shape, block)
    print(text)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / f"{args.name}.md").write_text(text + "\n")


def _shape_of(ranker):
    f = ranker.backend.facts
    return f.num_layers, f.num_heads, f.num_kv_heads, f.head_dim


def report(args, facts, timings, items, memory, shape, block) -> str:
    lines = [f"# Long-context bench: {args.model}, {args.dtype}", ""]
    lines += [f"- {k}: {v}" for k, v in facts.items()] + [""]
    names = timings.variants
    lines += ["| tokens | " + " | ".join(f"{n} s (+GiB)" for n in names) + " |",
              "|---" * (len(names) + 1) + "|"]
    for item in items:
        cells = [f"{timings.median(n, item.label):.2f} (+{_median_extra(timings, n, item):.2f})"
                 for n in names]
        lines.append(f"| {item.tokens} | " + " | ".join(cells) + " |")
    lines += ["", "| tokens | " + " | ".join(t[0] for t in TARGETS)
              + " | capture memory / KV cache |", "|---" * (len(TARGETS) + 2) + "|"]
    kv = next((m["kv_cache_bytes"] for m in memory if m["engine"] == "full model"), None)
    elem = 2 if args.dtype in ("bfloat16", "float16") else 4
    for item in items:
        cells = []
        for _, num, den, bound, op in TARGETS:
            if num not in names or den not in names:
                cells.append("not run")
                continue
            r = statistics.median(timings.ratios(num, den, [item.label]))
            met = r <= bound if op == "<=" else r >= bound
            cells.append(f"{r:.2f} ({op} {bound:g}: {'met' if met else 'missed'})")
        cap = capture_bytes(shape, item.tokens, item.request.real.query_len, block, elem)
        if kv:
            frac = cap / kv
            cells.append(f"{cap / GiB:.3f} / {kv / GiB:.2f} GiB = {frac:.1%} "
                         f"({'met' if frac <= CAPTURE_FRACTION else 'missed'})")
        else:
            cells.append("n/a")
        lines.append(f"| {item.tokens} | " + " | ".join(cells) + " |")
    lines += ["", "Engines (static): " + "; ".join(
        f"{m['engine']} ({m['dtype']}): weights {m['weight_bytes'] / GiB:.2f} GiB, KV cache "
        f"{m['kv_cache_bytes'] / GiB:.2f} GiB" for m in memory) + ".",
        "`+GiB`: peak RSS the call added over the process before it (all engines live in "
        "this process, so their weights and KV caches are not in it).",
        f"Load average during the run: {', '.join(f'{x:.1f}' for x in timings.load)}."]
    return "\n".join(lines)


def _median_extra(timings, name, item) -> float:
    values = timings.extra.get("rss", {}).get(name, {}).get(item.label, [])
    return statistics.median(values) if values else float("nan")


if __name__ == "__main__":
    main()
