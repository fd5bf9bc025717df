"""Retrieval-quality bench (issue 6, items 1 and 4): QRHead heads vs ICR, random heads, BM25,
a dense embedder and the candidate order, with ranx metrics, a markdown table and a bar chart.

    python bench/quality.py --out docs/                   # HotpotQA evaluation half, bundled model
    python bench/quality.py --beir-dir DIR --model meta-llama/Llama-3.1-8B-Instruct \\
        --heads llama-3.1-8b-instruct-nq --max-words 400 --reverse-order --num-queries 512 --seed 42
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # `python bench/quality.py`

from bench import baselines, beir                                        # noqa: E402
from bench.llm import HeadSet, llm_runs, random_head_sets                 # noqa: E402
from bench.metrics import evaluate_runs, mean_of                          # noqa: E402
from bench.report import Row, bar_chart, git_commit, machine, markdown, now, table  # noqa: E402
from qrhead_vllm.core import truncate_words                               # noqa: E402
from qrhead_vllm.datasets import (HOTPOTQA, SPLIT_SEED, Example, load_hotpotqa,  # noqa: E402
                              split_examples)
from qrhead_vllm.models import DEFAULT_MODEL                              # noqa: E402
from qrhead_vllm.results import Document                                  # noqa: E402

METHODS = ("qrhead", "icr", "random", "dense", "bm25", "original")
BEIR_METHODS = ("qrhead", "original")
APPENDIX = (Path(__file__).resolve().parent / "quality_notes.md")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, epilog=beir.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL, help="bundled name, HF dir or hub id")
    p.add_argument("--heads", default=None, help="QRHead row's heads: shipped config name, path, "
                   "'all', or 'L-H,L-H,...' (default: the model's detected head set)")
    p.add_argument("--extra-heads", default="", help="more QRHead rows: comma list of shipped "
                   "config names or paths (free: every prompt is prefilled once for all sets)")
    p.add_argument("--backend", default="transformers", choices=("transformers", "vllm", "both"))
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu", help="transformers backend only (cpu, cuda)")
    p.add_argument("--methods", default=None, help=f"comma list of {','.join(METHODS)} "
                   f"(default: all; with --beir-dir: {','.join(BEIR_METHODS)})")
    p.add_argument("--limit", type=int, default=None, help="first N queries only")
    p.add_argument("--random-draws", type=int, default=3, help="random head sets to average")
    p.add_argument("--random-heads", type=int, default=16, help="heads per random draw")
    p.add_argument("--batch", type=int, default=None,
                   help="queries per engine call (default 1; 16 on vLLM, which batches them)")
    p.add_argument("--out", default="docs", help="directory for <name>.md and <name>.png")
    p.add_argument("--name", default=None,
                   help="output file stem (default quality, or quality-beir-DIR)")
    g = p.add_argument_group("BEIR-style reproduction (item 4)")
    g.add_argument("--beir-dir", default=None, help="BEIR directory (layout below)")
    g.add_argument("--candidates", default=None, help="candidates file (default DIR/run.bm25.txt "
                   "or DIR/candidates.json)")
    g.add_argument("--top-k", type=int, default=200, help="candidates per query to re-rank")
    g.add_argument("--num-queries", type=int, default=512, help="sample size (reference: 512)")
    g.add_argument("--seed", type=int, default=42, help="sampling seed (reference: 42)")
    g.add_argument("--max-words", type=int, default=None, help="truncate docs (reference: 400)")
    g.add_argument("--reverse-order", action="store_true",
                   help="feed candidates last-to-first, rank 1 next to the query (reference)")
    args = p.parse_args(argv)
    args.methods = tuple((args.methods or ",".join(BEIR_METHODS if args.beir_dir else METHODS))
                         .split(","))
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        p.error(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    return args


def load_data(args) -> tuple[list[Example], dict, str]:
    """Examples, their qrels and a sentence saying which split they are."""
    if args.beir_dir:
        examples, qrels = beir.load_beir(args.beir_dir, args.candidates, args.top_k,
                                         args.num_queries, args.seed, args.max_words)
        split = (f"BEIR-style `{args.beir_dir}`, qrels/test.tsv, top-{args.top_k} candidates, "
                 f"{len(examples)} queries (sampled with seed {args.seed} if more than "
                 f"{args.num_queries}), zero-relevance qrels dropped")
    else:
        examples = split_examples(load_hotpotqa())[1]         # never the detection half
        examples = [Example(e.qid, e.query, tuple(Document(truncate_words(d.text, args.max_words),
                    d.title, d.doc_id) for d in e.documents), e.gold_ids) for e in examples]
        qrels = {e.qid: {g: 1 for g in e.gold_ids} for e in examples}
        split = (f"`{HOTPOTQA.name}` (HotpotQA distractor dev), the evaluation half of "
                 f"`split_examples` (seed {SPLIT_SEED}); heads are detected on the other half")
    if args.limit:
        examples = examples[:args.limit]
        qrels = {e.qid: qrels[e.qid] for e in examples}
    sizes = sorted({len(e.documents) for e in examples})
    gold = sorted({len(e.gold_ids) for e in examples})
    split += (f": {len(examples)} queries x {'/'.join(map(str, sizes))} candidates, "
              f"{'/'.join(map(str, gold))} relevant each")
    return examples, qrels, split


def head_sets(args, facts) -> list[HeadSet]:
    sets = []
    if "qrhead" in args.methods:
        heads = args.heads
        if heads and "-" in heads and all(p.strip().replace("-", "").isdigit()
                                           for p in heads.split(",")):
            from qrhead_vllm.heads import parse_head_list
            heads = parse_head_list(heads)
        sets.append(HeadSet("QRHead (detected heads)" if args.heads is None
                            else f"QRHead ({args.heads})", heads))
        sets += [HeadSet(f"QRHead ({n})", n) for n in args.extra_heads.split(",") if n]
    if "icr" in args.methods:
        sets.append(HeadSet("all heads (ICR)", "all"))
    if "random" in args.methods:
        sets += random_head_sets(facts, args.random_heads, args.random_draws)
    return sets


def llm_rows(args, backend: str, examples, qrels, notes, facts_out) -> list[Row]:
    """Every head set on one engine; random draws folded into one averaged row."""
    from qrhead_vllm.ranker import make_backend

    t0 = time.perf_counter()
    kw = {"device": args.device} if backend == "transformers" else {}
    try:
        engine = make_backend(backend, args.model, args.dtype, **kw)
    except Exception as e:                    # e.g. the vLLM backend is not built here yet
        notes.append(f"{backend} backend: not available ({type(e).__name__}: {e})")
        return []
    try:
        sets = head_sets(args, engine.facts)
        batch = args.batch or (16 if backend == "vllm" else 1)
        results = llm_runs(args.model, engine, sets, examples, notes, args.reverse_order, batch)
    except Exception as e:                    # keep the other backend's and baselines' rows
        notes.append(f"{backend} backend: failed while ranking ({type(e).__name__}: {e})")
        return []
    finally:
        engine.close()                        # a vLLM engine holds worker processes
    facts_out[f"LLM time ({backend})"] = (f"{time.perf_counter() - t0:.0f} s for model load and "
                                          f"all head sets (each prompt prefilled once)")
    tag = f" [{backend}]" if args.backend == "both" else ""
    rows, draws = [], []
    for s, run, config in results:
        scores = evaluate_runs(qrels, run)
        if config is not None and config.provenance.source != "manual":
            facts_out[f"heads {config.name}"] = describe(config)   # where the set came from
            rows.append(Row(f"QRHead ({config.name}, {len(config.heads)} heads){tag}", scores))
        elif s.draw is None:
            rows.append(Row(s.label + tag, scores))
        else:
            draws.append((s.draw, scores))
    if draws:
        rows.append(Row(f"random {args.random_heads} heads (mean of {len(draws)}){tag}",
                        mean_of([d for _, d in draws]), draws))
    return rows


def describe(config) -> str:
    """Where a head set came from, so a reader can check it was not fit on these queries."""
    p = config.provenance
    bits = [f"{len(config.heads)} heads", f"source {p.source}"]
    bits += [f"{k} {v}" for k, v in (("recipe", p.recipe), ("data", p.dataset),
             ("examples", p.num_examples), ("created", p.created), ("notes", p.notes)) if v]
    return ", ".join(bits)


def baseline_rows(args, examples, qrels) -> list[Row]:
    rows = []
    if "dense" in args.methods:
        rows.append(Row("dense all-MiniLM-L6-v2",
                        evaluate_runs(qrels, baselines.dense_rerank(examples))))
    if "bm25" in args.methods:
        rows.append(Row("BM25 (bm25s)", evaluate_runs(qrels, baselines.bm25_rerank(examples))))
    if "original" in args.methods:
        label = "first-stage order (BM25)" if args.beir_dir else "original candidate order"
        rows.append(Row(label, evaluate_runs(qrels, baselines.original_order(examples))))
    return rows


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    t0 = time.perf_counter()
    facts = {"date": now(), "machine": machine(),
             "command": f"`python bench/quality.py {shlex.join(argv)}`", "commit": git_commit()}
    examples, qrels, facts["split"] = load_data(args)
    facts["model"] = f"{args.model}, dtype {args.dtype}" + (
        ", candidates reversed in the prompt" if args.reverse_order else "")
    notes: list[str] = []
    rows = []
    if {"qrhead", "icr", "random"} & set(args.methods):
        for backend in (("transformers", "vllm") if args.backend == "both" else (args.backend,)):
            rows += llm_rows(args, backend, examples, qrels, notes, facts)
    rows += baseline_rows(args, examples, qrels)
    facts["runtime"] = f"{time.perf_counter() - t0:.0f} s in total"
    name = args.name or (f"quality-beir-{Path(args.beir_dir).name}" if args.beir_dir else "quality")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    title = "Retrieval quality" + (f": {Path(args.beir_dir).name}" if args.beir_dir
                                   else ", HotpotQA")
    bar_chart(rows, out / f"{name}.png", f"{title} ({args.model}, {len(examples)} queries)")
    text = markdown(title, facts, rows, notes, f"{name}.png", APPENDIX.read_text())
    (out / f"{name}.md").write_text(text)
    print(table(rows))
    for n in notes:
        print(f"note: {n}")
    print(f"wrote {out / name}.md and .png ({facts['runtime']})")
    failed = any("backend: failed" in n or "backend: not available" in n for n in notes)
    return 1 if failed or not rows else 0          # an incomplete table must not look green


if __name__ == "__main__":
    sys.exit(main())
