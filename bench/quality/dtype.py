"""bf16 against fp32 on the standard benches (issue 19): same model, heads and prompts, only the
dtype differs. Per bench: nDCG@10 of each dtype (graded, as bench/quality.py computes it), the
per-query Kendall tau-b of the two score lists, and the largest score difference.

    nice -n 15 python bench/quality/dtype.py --dataset dl19 --top-k 20 --dataset hotpotqa

The default backend is the transformers port (the reference of every engine's scores); pass
``--backend vllm`` for the engine hook (one engine per dtype, started in turn).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))   # `python bench/quality/dtype.py`

from bench.quality.metrics import evaluate_runs                          # noqa: E402
from bench.speed.bf16 import kendall_tau_b                       # noqa: E402
from bench.quality.standard import BENCHMARKS, load_benchmark            # noqa: E402
from qrhead_vllm import QRHeadRanker                             # noqa: E402
from qrhead_vllm.models import DEFAULT_MODEL                     # noqa: E402
from qrhead_vllm.engines import DEFAULT_ENGINE, ENGINE_NAMES      # noqa: E402

DTYPES = ("float32", "bfloat16")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", action="append", choices=sorted(BENCHMARKS),
                   help="repeat for several benches (default: dl19 and hotpotqa)")
    p.add_argument("--top-k", type=int, default=20, help="candidates per query (DL19: BM25 "
                   "top-k; benches with fewer candidates keep all)")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--heads", default=None, help="default: the model's detected head set")
    p.add_argument("--backend", default=DEFAULT_ENGINE, choices=ENGINE_NAMES)
    p.add_argument("--limit", type=int, default=None, help="first N queries only")
    return p.parse_args(argv)


def score_all(ranker, examples) -> dict[str, list[float]]:
    """qid -> scores in candidate order."""
    out = {}
    for e in examples:
        ranking = ranker.rank(e.query, list(e.documents))
        out[e.qid] = [ranking.get_result_by_docid(d.doc_id).score for d in e.documents]
    return out


def bench_dtypes(args, name: str) -> dict:
    bench = BENCHMARKS[name]
    top_k = args.top_k if bench.top_k else None
    examples, qrels, split = load_benchmark(bench, top_k, None, args.limit)
    scores, seconds = {}, {}
    for dtype in DTYPES:
        extra = {"max_model_len": 8192} if args.backend == "vllm" else {}
        ranker = QRHeadRanker(args.model, heads=args.heads, backend=args.backend, dtype=dtype,
                              **extra)
        start = time.perf_counter()
        scores[dtype] = score_all(ranker, examples)
        seconds[dtype] = time.perf_counter() - start
        ranker.close()
        print(f"[{name}] {dtype}: {seconds[dtype]:.0f} s", file=sys.stderr, flush=True)
    ids = {e.qid: [d.doc_id for d in e.documents] for e in examples}
    ndcg = {dtype: 100 * evaluate_runs(qrels, {q: _ranked(ids[q], s) for q, s in
                                               scores[dtype].items()}, ("ndcg@10",))["ndcg@10"]
            for dtype in DTYPES}
    a, b = scores["float32"], scores["bfloat16"]
    taus = [kendall_tau_b(a[q], b[q]) for q in a]
    diffs = [abs(x - y) for q in a for x, y in zip(a[q], b[q])]
    return {"bench": name, "split": split, "ndcg": ndcg, "tau_mean": statistics.fmean(taus),
            "tau_min": min(taus), "max_diff": max(diffs), "mean_diff": statistics.fmean(diffs),
            "seconds": seconds}


def _ranked(doc_ids, scores):
    return [d for _, d in sorted(zip(scores, doc_ids), key=lambda p: -p[0])]


def markdown(rows, args) -> str:
    lines = [f"Model `{args.model}`, heads {args.heads or 'detected (default)'}, backend "
             f"`{args.backend}`.", "",
             "| bench | nDCG@10 fp32 | nDCG@10 bf16 | Δ | Kendall tau mean / min | max abs score "
             "diff (mean) |", "|---|---|---|---|---|---|"]
    for r in rows:
        n32, n16 = r["ndcg"]["float32"], r["ndcg"]["bfloat16"]
        lines.append(f"| {r['bench']} | {n32:.1f} | {n16:.1f} | {n16 - n32:+.1f} | "
                     f"{r['tau_mean']:.3f} / {r['tau_min']:.3f} | {r['max_diff']:.4f} "
                     f"({r['mean_diff']:.4f}) |")
    lines += [""] + [f"- {r['bench']}: {r['split']}" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    rows = [bench_dtypes(args, name) for name in args.dataset or ("dl19", "hotpotqa")]
    print(markdown(rows, args))


if __name__ == "__main__":
    main()
