"""Capture overhead on SGLang, measured like bench/speed/speed.py measures it on vLLM: the same
prompts prefilled by ordinary requests (``plain``: the hook installed, nothing to capture) and
by scoring requests (``capture``), side by side on one engine, repeated with the variant order
rotating, reported as medians of paired ratios (bench/speed/timing.py). The radix cache is
flushed before every timed call and every call is asserted to have had no cache hit.

    .venv-sglang/bin/python bench/speed/speed_sglang.py                       # ~15-25 min on 2 cores
    .venv-sglang/bin/python bench/speed/speed_sglang.py --quick --out /tmp/s  # a smoke run

Writes ``<out>/speed_sglang.md``. On a CPU-only box SGLang needs the import-time stand-ins of
tests/sglang/stubs (no CPU build of sgl_kernel on PyPI): source scripts/sglang_cpu_env.sh first;
the run fails if any of them was called. The capture's own time comes from each result's
``capture_s`` (the scheduler runs in its own process, out of reach of an in-process timer).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))                                   # `python bench/speed/speed_sglang.py`

from bench.speed import report as speed_report                                  # noqa: E402
from bench.speed.prompts import hotpot_items, length_item       # noqa: E402
from bench.speed.timing import interleave, load_average         # noqa: E402

QUICK = {"queries": 1, "reps": 2, "overhead_long": 0}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--heads", default=None, help="shipped head config (default: the model's)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--queries", type=int, default=4, help="HotpotQA prompts")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--overhead-long", type=int, default=4096,
                   help="also a prompt of this many tokens (0: no)")
    p.add_argument("--max-model-len", type=int, default=8192)
    p.add_argument("--quick", action="store_true", help="tiny sizes: " + str(QUICK))
    p.add_argument("--out", default="docs/results")
    args = p.parse_args(argv)
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    return args


def standin_log() -> Path | None:
    """The stand-ins' call log on a CPU-only box, where SGLang imports only with them on the
    path: ``. scripts/sglang_cpu_env.sh`` sets both up (None on a GPU box)."""
    if _has_cuda():
        return None
    try:
        import sglang  # noqa: F401
    except ImportError as e:
        raise SystemExit(f"SGLang does not import on this CPU box ({e}): run "
                         "`. scripts/sglang_cpu_env.sh` first (the CPU stand-ins)") from None
    log = os.environ.get("QRHEAD_STANDIN_LOG")
    return Path(log) if log else None


def variants(backend):
    """plain / capture callables on one engine; each starts from an empty radix cache."""
    from qrhead_vllm.integration.sglang.backend import scoring_request
    from qrhead_vllm.integration.sglang.results import decode_result
    engine = backend.engine

    def run(ids, params):
        if not engine.flush_cache().success:
            raise RuntimeError("SGLang refused to flush the radix cache")
        out = engine.generate(input_ids=ids, sampling_params=params)
        if out["meta_info"].get("cached_tokens"):
            raise RuntimeError("unexpected radix-cache hit: this prefill would be cheaper")
        return out

    def plain(item):
        run(list(item.request.real.token_ids), {"max_new_tokens": 1, "temperature": 0.0})

    def capture(item):
        ids, params, _ = scoring_request(item.request.real, item.request.heads)
        out = run(ids, params)
        decode_result(out["meta_info"], len(item.request.heads))   # raises if it is missing
        payload = next(p for p in out["meta_info"]["qrhead"] if p)
        return {"hook": payload["capture_s"]}

    return {"plain": plain, "capture": capture}


def engine_cpu_seconds() -> float:
    """CPU time (user + system) of this process and its children: SGLang's scheduler and
    detokenizer run as child processes, where the prefill and the capture happen."""
    import psutil
    total = 0.0
    for proc in [psutil.Process()] + psutil.Process().children(recursive=True):
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def write(args, command, facts, timings, out: Path) -> Path:
    o = timings
    lines = ["# Capture overhead on SGLang", ""] + [f"- **{k}**: {v}" for k, v in facts.items()]
    lines += ["", "| figure | wall-time ratio | CPU-time ratio | best-of-N ratio |",
              "|---|---|---|---|"]
    lines.append(f"| capture overhead, hook on / off (scoring / ordinary request) | "
                 f"{o.ratio('capture', 'plain')} | {o.ratio('capture', 'plain', kind='cpu')} | "
                 f"{o.best_ratio('capture', 'plain'):.3f} |")
    lines += ["", speed_report.timing_table(o, {"capture / plain": ("capture", "plain")},
                                            hook=True), "",
              "CPU time covers this process and its children (SGLang's scheduler and "
              "detokenizer). `hook ms` is the capture's own time, reported by the scheduler.",
              ""]
    out.mkdir(parents=True, exist_ok=True)
    path = out / "speed_sglang.md"
    path.write_text("\n".join(lines))
    return path


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    log = standin_log()
    from qrhead_vllm.datasets import load_hotpotqa
    from qrhead_vllm.ranker import QRHeadRanker
    import sglang
    facts = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
             "machine": speed_report.machine(), "command": " ".join(
                 ["python bench/speed/speed_sglang.py"] + ([shlex.join(argv)] if argv else [])),
             "versions": f"sglang {sglang.__version__}, {speed_report.versions()}",
             "load average at start": f"{load_average():.1f}"}
    start = time.perf_counter()
    ranker = QRHeadRanker(args.model, heads=args.heads, backend="sglang", dtype=args.dtype,
                          max_model_len=args.max_model_len)
    facts["engine start"] = f"{time.perf_counter() - start:.0f} s"
    facts["heads"] = f"{ranker.heads.name if ranker.heads else 'all'} ({len(ranker.head_pairs)})"
    try:
        examples = load_hotpotqa()
        items = hotpot_items(ranker, examples, args.queries)
        if args.overhead_long:
            items.append(length_item(ranker, examples, args.overhead_long, start=40))
        timings = interleave(variants(ranker.backend), items, args.reps, "sglang overhead",
                             cpu_clock=engine_cpu_seconds)
    finally:
        ranker.close()
    facts["load average at end"] = f"{load_average():.1f}"
    print(f"wrote {write(args, facts['command'], facts, timings, Path(args.out))}",
          file=sys.stderr)
    if log is not None and log.exists() and log.read_text().strip():
        raise SystemExit(f"a CPU stand-in was called during the bench: {log}")


def _has_cuda() -> bool:
    import torch
    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
