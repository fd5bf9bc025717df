"""Citation quality: which documents did the generated answer come from? (issue 26, item 5)

For each question of the evaluation half (HotpotQA, MuSiQue: the labelled supporting paragraphs
are the gold), the model answers from the scoring prompt (core/prompt.py: the documents, the
instruction + "Query: <question>", the assistant header; greedy), and each method names the
documents the answer cites:

    (a)  decode-time attention of the model's shipped retrieval heads over the documents,
         summed over the answer's tokens (core/citations.cite: the decode-only rule, and the
         rule that blends short sentences with the prefill scores)
    (a') the same with the model's citation heads (head_registry.CITATION_HEADS)
    (b)  the same with all heads
    (c)  the prefill scores' top 2 (what /v1/rerank returns for the question)
    (d)  BM25 of question + answer, top 2 (bench/quality/baselines.bm25_rerank)
    (e)  ContextCite, top 2 (``context-cite``; bench/quality/citations_baselines.py)
    (f)  AT2, top 2 (``at2``; per-head weights trained on the detection half)

The attention rows come from the Python port (the oracle of the engine's decode capture):
``TransformersBackend.decode_mass`` teacher-forces the generated answer in one forward pass and
returns ``[G, H, N]`` for every head; each head set reads its own heads. The engine captures the
same during generation, with no extra forward pass.

    # once: the venv with ContextCite and AT2 (see citations_baselines.py)
    .venv-cite/bin/python bench/quality/citations.py train-at2 --data hotpotqa --limit 6
    .venv-cite/bin/python bench/quality/citations.py run --data hotpotqa --limit 10
    .venv-cite/bin/python bench/quality/citations.py run --data musique --limit 6
    .venv-cite/bin/python bench/quality/citations.py report --out docs/results/citations.md

``run`` and ``train-at2`` append one JSONL line per question (docs/results/citations*.jsonl)
and skip questions already there, so runs resume; ``--budget-s`` stops starting questions after
that many seconds. The per-token mass of every head is kept in ``.cache/citations/`` (not
committed) for ``report``, which rebuilds the table from both.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))   # `python bench/quality/...`

from bench.quality.citation_run import (DATA, RESULTS, Bench, measure, train_example,  # noqa: E402
                                        todo)
from bench.quality.citation_report import write_report                     # noqa: E402
from bench.quality.answer import load_questions                           # noqa: E402
from qrhead_vllm.datasets import load_shared, split_examples               # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=("run", "train-at2", "report"))
    p.add_argument("--data", default="hotpotqa", choices=tuple(DATA))
    p.add_argument("--model", default="qwen2.5-coder-0.5b",
                   help="a bundled model (report: several, comma-separated)")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--limit", type=int, default=10, help="first N questions of the half")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--ablations", type=int, default=32,
                   help="ContextCite ablations per answer (package default 64) and AT2's "
                        "per training example (package default 32)")
    p.add_argument("--budget-s", type=float, default=660,
                   help="start no new question after this many seconds")
    p.add_argument("--results", default=str(RESULTS), help="folder of the JSONL files")
    p.add_argument("--out", default="docs/results/citations.md")
    return p.parse_args(argv)


def append(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def main(argv=None) -> None:
    args = parse_args(argv)
    results = Path(args.results)
    if args.stage == "report":
        write_report(results, Path(args.out), args.model.split(","))
        return
    t0 = time.perf_counter()
    bench = Bench(args.model, args.dtype, args.max_new_tokens, args.ablations)
    if args.stage == "run":
        path = results / f"citations-{args.data}.jsonl"
        items = [(q.example, q.answers) for q in load_questions(args.data, args.limit)]
        step = measure
    else:
        path = results / f"citations-at2-train-{args.data}.jsonl"
        items = [(e, ()) for e in split_examples(load_shared(args.data))[0][:args.limit]]
        step = train_example
    for example, answers in todo(path, items, args.model):
        if time.perf_counter() - t0 > args.budget_s:
            print(f"budget of {args.budget_s:.0f}s spent: stopping", file=sys.stderr)
            break
        record = step(bench, args.data, example, answers)
        record.update(model=args.model, dtype=str(bench.backend.model.dtype).split(".")[-1],
                      command=" ".join(shlex.quote(a) for a in sys.argv))
        append(path, record)
        print(f"{args.data} {example.qid}: {record['answer']!r} "
              f"{time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
