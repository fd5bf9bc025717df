"""Retrieval heads against citation heads: recall@2 of the gold supporting paragraphs from the
attention of the gold answer's tokens (teacher-forced after the scoring prompt, as the
citation-head recipe detects them) and, for reference, of the question's tokens (what
``/v1/rerank`` reads), for the model's shipped retrieval heads, its citation heads and all heads,
on the evaluation half of the data (the heads were detected on the other half).

    python bench/quality/citation_heads.py --model smollm2-135m --out docs/results/
    python bench/quality/citation_heads.py --model qwen2.5-coder-1.5b --backend vllm \\
        --dtype bfloat16 --limit 20 --out docs/results/

Per example, one engine call per span captures every head (the answer prompt extends the
question prompt, so vLLM's prefix cache serves its documents); each head set reads its own
rows, as bench/quality/llm.py does. Prompts keep the data's document order (no reversal), as detection.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))   # `python bench/quality/...`

import torch                                                                # noqa: E402

from bench.quality.metrics import evaluate_runs, order_by_scores            # noqa: E402
from bench.report import git_commit, machine, now                          # noqa: E402
from qrhead_vllm.core import score_documents                               # noqa: E402
from qrhead_vllm.datasets import SPLIT_SEED, load_shared, split_examples   # noqa: E402
from qrhead_vllm.detect.spans import SPANS                                 # noqa: E402
from qrhead_vllm.engines import DEFAULT_ENGINE, ENGINE_NAMES, make_backend  # noqa: E402
from qrhead_vllm.head_registry import CITATION_HEADS, DEFAULT_HEADS, load_head_config  # noqa: E402
from qrhead_vllm.ranker import QRHeadRanker                                # noqa: E402

SHORT = {"yes", "no"}     # answers with no text to match in a paragraph


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data", default="hotpotqa", help="shared data name or file (shared shape)")
    p.add_argument("--retrieval-heads", default=None, help="default: the model's DEFAULT_HEADS")
    p.add_argument("--citation-heads", default=None, help="default: the model's CITATION_HEADS")
    p.add_argument("--backend", default=DEFAULT_ENGINE, choices=ENGINE_NAMES)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--no-calibrate", action="store_true", help="raw attention (no null twin)")
    p.add_argument("--limit", type=int, default=None, help="first N evaluation examples")
    p.add_argument("--out", default=None, help="directory for citation-heads-<model>-<data>.md")
    return p.parse_args(argv)


def head_rows(facts, sets: dict[str, object]) -> dict[str, torch.Tensor]:
    """Row indices (into the all-heads capture, (layer, head) row-major) of each head set."""
    out = {}
    for label, name in sets.items():
        pairs = (load_head_config(name).pairs if name != "all"
                 else [(l, h) for l in range(facts.num_layers) for h in range(facts.num_heads)])
        out[label] = torch.tensor([l * facts.num_heads + h for l, h in pairs])
    return out


def run(args) -> tuple[dict, dict, set, float]:
    """Runs (qid -> doc ids best first) per (span, head set), the qrels, the ids of the
    yes/no answers and seconds per example."""
    examples = split_examples(load_shared(args.data))[1][: args.limit]   # never detection's half
    backend = make_backend(args.backend, args.model, args.dtype)
    ranker = QRHeadRanker(args.model, heads="all", backend=backend, reverse_order=False,
                          calibrate=not args.no_calibrate)
    sets = {"retrieval heads": args.retrieval_heads or DEFAULT_HEADS[args.model],
            "citation heads": args.citation_heads or CITATION_HEADS[args.model], "all heads": "all"}
    rows = head_rows(backend.facts, sets)
    runs: dict = {}
    t0 = time.perf_counter()
    for n, ex in enumerate(examples, start=1):
        for span in ("question", "answer"):
            docs, req = SPANS[span].prepare(ranker, ex)
            # One call per span, the question first: the answer prompt extends the question
            # prompt, so the other order would let the question's span hit the prefix cache.
            mass = backend.attention_mass([req])[0]
            ids = [str(d.doc_id) for d in docs]
            for label, idx in rows.items():
                null = None if mass.null is None else mass.null[idx]
                scores = score_documents(mass.real[idx], null, req.real.doc_spans)
                runs.setdefault((span, label), {})[ex.qid] = order_by_scores(ids, scores.tolist())
        print(f"  {n}/{len(examples)} examples, {time.perf_counter() - t0:.0f}s",
              file=sys.stderr, flush=True)
    backend.close()
    qrels = {e.qid: e.graded() for e in examples}
    short = {e.qid for e in examples if e.answer.lower().strip(".") in SHORT}
    return runs, qrels, short, (time.perf_counter() - t0) / max(len(examples), 1)


def report(args, runs, qrels, short, seconds, sets_note: str) -> str:
    long_ = set(qrels) - short
    lines = ["| span | heads | recall@2, all | answers other than yes/no | yes/no answers |",
             "|---|---|---|---|---|"]
    for (span, label), r in runs.items():
        cells = [100 * evaluate_runs({q: qrels[q] for q in part}, {q: r[q] for q in part},
                                     ["recall@2"])["recall@2"] if part else float("nan")
                 for part in (set(qrels), long_, short)]
        lines.append(f"| {span} | {label} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")
    facts = [f"date: {now()}", f"machine: {machine()}", f"commit: {git_commit()}",
             f"command: `python bench/quality/citation_heads.py {shlex.join(sys.argv[1:])}`",
             f"data: `{args.data}`, evaluation half of `split_examples` (seed {SPLIT_SEED}), "
             f"n = {len(qrels)} ({len(qrels) - len(short)} other answers, {len(short)} yes/no)",
             f"heads: {sets_note}", f"calibrated: {not args.no_calibrate}",
             f"{seconds:.1f} s per example (both spans, every head captured once)"]
    return "\n".join([f"# Citation heads: {args.model} on {args.data}", ""]
                     + [f"- {f}" for f in facts] + ["", *lines, ""])


def main(argv=None) -> int:
    args = parse_args(argv)
    runs, qrels, short, seconds = run(args)
    note = (f"retrieval `{args.retrieval_heads or DEFAULT_HEADS[args.model]}`, citation "
            f"`{args.citation_heads or CITATION_HEADS[args.model]}`")
    text = report(args, runs, qrels, short, seconds, note)
    print(text)
    if args.out:
        name = Path(args.data).stem if Path(args.data).suffix else args.data
        path = Path(args.out) / f"citation-heads-{args.model}-{name}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
