"""Retrieval-quality bench: QRHead head sets vs ICR, random heads, a dense embedder, BM25 and the
first-stage order, with ranx metrics (graded nDCG as trec_eval), a markdown table and a chart.

    python bench/quality/quality.py --dataset dl19 --out docs/results/     # one standard bench (bench/quality/standard.py)
    python bench/quality/quality.py --dataset scifact --out docs/results/
    python bench/quality/quality.py --dataset musique --out docs/results/
    python bench/quality/quality.py --out docs/results/                    # HotpotQA evaluation half
    python bench/quality/quality.py --beir-dir DIR --model meta-llama/Llama-3.1-8B-Instruct \\
        --heads llama-3.1-8b-instruct-nq --max-words 400 --reverse-order --num-queries 512 --seed 42
"""

from __future__ import annotations

import argparse
import random
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))   # `python bench/quality/quality.py`

from bench.quality import beir                                             # noqa: E402
from bench.quality.metrics import GRADED_METRICS                           # noqa: E402
from bench.quality.rows import (LLM_METHODS, baseline_rows, fusion_row,   # noqa: E402
                                llm_rows)
from bench.quality.standard import BENCHMARKS, load_benchmark              # noqa: E402
from bench.report import bar_chart, git_commit, machine, markdown, now, table  # noqa: E402
from qrhead_vllm.engines import DEFAULT_ENGINE, ENGINE_NAMES               # noqa: E402
from qrhead_vllm.models import DEFAULT_MODEL                               # noqa: E402
from qrhead_vllm.windows import WindowConfig                               # noqa: E402

METHODS = LLM_METHODS + ("dense", "bm25", "original", "fusion")
BEIR_METHODS = ("qrhead", "original")
APPENDIX = (Path(__file__).resolve().parent / "notes.md")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, epilog=beir.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="hotpotqa", choices=sorted(BENCHMARKS),
                   help="standard bench on the shared data (bench/quality/standard.py)")
    p.add_argument("--data", default=None, help="a JSONL file in the shared shape to use "
                   "instead of the dataset's shared file, under the same protocol (e.g. TREC "
                   "DL20 BM25 top-100 with --dataset dl19)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="bundled name, HF dir or hub id; "
                   "a comma list runs each model in turn, rows from the same run")
    p.add_argument("--heads", default=None, help="QRHead row's heads: shipped config name, path, "
                   "'all', or 'L-H,L-H,...' (default: the model's detected head set)")
    p.add_argument("--extra-heads", default="", help="more QRHead rows: comma list of shipped "
                   "config names or paths (free: every prompt is prefilled once for all sets)")
    p.add_argument("--shipped-heads", action="store_true",
                   help="a QRHead row for every shipped head config made for each model")
    p.add_argument("--backend", default=DEFAULT_ENGINE, choices=(*ENGINE_NAMES, "both"),
                   help="scoring engine (qrhead_vllm.engines); both: transformers and vllm")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu", help="transformers backend only (cpu, cuda)")
    p.add_argument("--max-model-len", type=int, default=None, help="vLLM backend only")
    p.add_argument("--methods", default=None, help=f"comma list of {','.join(METHODS)} "
                   f"(default: all; with --beir-dir: {','.join(BEIR_METHODS)})")
    p.add_argument("--limit", type=int, default=None, help="first N queries only")
    w = p.add_argument_group("windows (lists longer than one prompt; qrhead_vllm.windows)")
    w.add_argument("--window-strategy", default="rescore", choices=("rescore", "sliding"))
    w.add_argument("--window-tokens", type=int, default=None, help="tokens per prompt "
                   "(default: the model's context)")
    w.add_argument("--window-docs", type=int, default=None,
                   help="documents per window (sliding default 20)")
    w.add_argument("--step", type=int, default=10, help="sliding step (RankGPT: 10)")
    w.add_argument("--finalists", type=int, default=None,
                   help="rescore: documents re-scored together (default: what fits)")
    w.add_argument("--given-order", action="store_true",
                   help="candidates in first-stage order in the prompt (rank 1 first); the "
                        "default follows the library (QRHeadRanker's reverse_order)")
    p.add_argument("--shuffle", type=int, default=None, metavar="SEED",
                   help="shuffle each query's candidates (seeded by SEED and the query id) "
                        "before ranking: separates the heads' own signal from the first-stage "
                        "order echoed back (the 'given order' row becomes that shuffled order)")
    p.add_argument("--prompt-family", default=None,
                   help="chat markers for every model (llama3, qwen2, chatml, gemma3); default: "
                        "each model's own (qrhead_vllm.models.prompt_template)")
    p.add_argument("--random-draws", type=int, default=3, help="random head sets to average")
    p.add_argument("--random-heads", type=int, default=16, help="heads per random draw")
    p.add_argument("--batch", type=int, default=None,
                   help="queries per engine call (default 1; 16 on vLLM, which batches them)")
    p.add_argument("--out", default="docs/results", help="directory for <name>.md and <name>.png")
    p.add_argument("--name", default=None,
                   help="output file stem (default quality, or quality-beir-DIR)")
    g = p.add_argument_group("BEIR-style reproduction (item 4)")
    g.add_argument("--beir-dir", default=None, help="BEIR directory (layout below)")
    g.add_argument("--candidates", default=None, help="candidates file (default DIR/run.bm25.txt "
                   "or DIR/candidates.json)")
    g.add_argument("--top-k", type=int, default=None, help="candidates per query to re-rank "
                   "(BEIR dir: 200; --dataset: the bench's own)")
    g.add_argument("--num-queries", type=int, default=512, help="sample size (reference: 512)")
    g.add_argument("--seed", type=int, default=42, help="sampling seed (reference: 42)")
    g.add_argument("--max-words", type=int, default=None, help="truncate docs (reference: 400)")
    g.add_argument("--reverse-order", action="store_true",
                   help="feed candidates last-to-first, rank 1 next to the query (reference)")
    args = p.parse_args(argv)
    bench = BENCHMARKS[args.dataset]
    default = BEIR_METHODS if args.beir_dir else bench.methods
    args.methods = tuple((args.methods or ",".join(default)).split(","))
    args.models = [m for m in args.model.split(",") if m]
    args.metrics = GRADED_METRICS if args.beir_dir else bench.metrics
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        p.error(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    return args


def load_data(args):
    """Examples, their graded qrels and a sentence saying exactly which data they are."""
    examples, qrels, split = _load_data(args)
    if args.shuffle is not None:
        examples = [shuffled(e, args.shuffle) for e in examples]
        split += f"; candidates shuffled per query (seed {args.shuffle} and the query id)"
    return examples, qrels, split


def shuffled(example, seed: int):
    """The example with its candidates in a seeded random order (the same on every run)."""
    docs = list(example.documents)
    random.Random(f"{seed}:{example.qid}").shuffle(docs)
    return replace(example, documents=tuple(docs))


def _load_data(args):
    if not args.beir_dir:
        return load_benchmark(BENCHMARKS[args.dataset], args.top_k, args.max_words, args.limit,
                              args.data)
    examples, qrels = beir.load_beir(args.beir_dir, args.candidates, args.top_k or 200,
                                     args.num_queries, args.seed, args.max_words)
    if args.limit:
        examples = examples[:args.limit]
        qrels = {e.qid: qrels[e.qid] for e in examples}
    split = (f"BEIR-style `{args.beir_dir}`, qrels/test.tsv, top-{args.top_k or 200} "
             f"candidates, {len(examples)} queries (sampled with seed {args.seed} if more than "
             f"{args.num_queries}), zero-relevance qrels dropped")
    return examples, qrels, split


def ranker_options(args) -> tuple[dict, str]:
    """QRHeadRanker keywords for every LLM row, and a sentence saying what they are."""
    from qrhead_vllm.ranker import QRHeadRanker

    window = WindowConfig(args.window_strategy, args.window_tokens, args.window_docs,
                          args.step, args.finalists)
    kw = {"window": window}
    if args.reverse_order:
        kw["reverse_order"] = True
    elif args.given_order:
        kw["reverse_order"] = False
    if args.prompt_family:
        kw["prompt_family"] = args.prompt_family
    reverse = kw.get("reverse_order",
                     QRHeadRanker.__init__.__kwdefaults__["reverse_order"])
    text = (("candidates reversed in the prompt (first-stage rank 1 next to the query)"
             if reverse else "candidates in first-stage order in the prompt (rank 1 first)")
            + (f"; prompt family {args.prompt_family}" if args.prompt_family else "")
            + f"; lists over one prompt: {window}")
    return kw, text


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    t0 = time.perf_counter()
    bench = BENCHMARKS[args.dataset]
    facts = {"date": now(), "machine": machine(),
             "command": f"`python bench/quality/quality.py {shlex.join(argv)}`", "commit": git_commit()}
    examples, qrels, facts["split"] = load_data(args)
    ranker_kw, facts["prompt"] = ranker_options(args)
    facts["model"] = f"{', '.join(args.models)}, dtype {args.dtype}"
    notes: list[str] = []
    rows, fused = [], []
    if set(LLM_METHODS) & set(args.methods):
        for model in args.models:
            for backend in (("transformers", "vllm") if args.backend == "both"
                            else (args.backend,)):
                got, first = llm_rows(args, model, backend, examples, qrels, notes, facts,
                                      ranker_kw)
                rows += got
                if first is not None and "fusion" in args.methods and not fused:
                    label = got[0].label if got else model
                    fused.append(fusion_row(args, examples, qrels, first, label))
    first_stage = "first-stage order (BM25)" if args.beir_dir else bench.first_stage
    rows += baseline_rows(args, examples, qrels, first_stage) + fused
    facts["runtime"] = f"{time.perf_counter() - t0:.0f} s in total"
    default_name = "quality" if args.dataset == "hotpotqa" else f"quality-{args.dataset}"
    name = args.name or (f"quality-beir-{Path(args.beir_dir).name}" if args.beir_dir
                         else default_name)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shown = (bench.title.replace(f"top-{bench.top_k}", f"top-{args.top_k}")
             if args.top_k and bench.top_k else bench.title)
    title = "Retrieval quality: " + (Path(args.beir_dir).name if args.beir_dir else shown)
    bar_chart(rows, out / f"{name}.png", f"{title} ({', '.join(args.models)}, "
                                         f"{len(examples)} queries)")
    text = markdown(title, facts, rows, notes, f"{name}.png", APPENDIX.read_text())
    (out / f"{name}.md").write_text(text)
    print(table(rows))
    for n in notes:
        print(f"note: {n}")
    print(f"wrote {out / name}.md and .png ({facts['runtime']})")
    failed = any("failed while ranking" in n or "not available" in n for n in notes)
    return 1 if failed or not rows else 0          # an incomplete table must not look green


if __name__ == "__main__":
    sys.exit(main())
