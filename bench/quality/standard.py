"""The standard re-ranking benchmarks on the shared data (one ``--dataset`` each in
bench/quality/quality.py): which queries, which candidates, which metrics, which baseline rows.

| name | queries | candidates | metrics |
|---|---|---|---|
| ``dl19`` | TREC DL 2019 passage, all 43 | BM25 top-100 (``--top-k``), windowed when over one prompt | nDCG@10 (graded, trec_eval), MRR@10 and R@20 at grade >= 2 |
| ``scifact`` | 100 BEIR SciFact dev claims, the 88 with a gold abstract among the candidates | BM25 top-20 | nDCG@10 (graded), MRR@10, R@5 |
| ``musique`` | evaluation half of 100 MuSiQue questions (50) | its 20 paragraphs, dataset order | nDCG@10, R@2, R@5 |
| ``hotpotqa`` | evaluation half of 70 HotpotQA dev questions (35) | its 10 paragraphs | nDCG@10, MRR@10, R@2, R@5 |

Detection data never overlaps what is scored here: HotpotQA and MuSiQue heads come from the
*detection* halves of ``split_examples``; DL19 and SciFact are never detected on.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from qrhead_vllm.core import truncate_words
from qrhead_vllm.datasets import SPLIT_SEED, Example, load_shared, shared_path, split_examples
from qrhead_vllm.results import Document

from bench.quality.metrics import GRADED_METRICS, METRICS, TREC_DL_METRICS, Qrels


@dataclass(frozen=True)
class Benchmark:
    """One standard bench: its data, metrics and the methods it reports by default."""

    name: str
    title: str
    metrics: tuple[str, ...]
    methods: tuple[str, ...]
    first_stage: str               # label of the "candidates as given" row
    top_k: int | None = None       # candidates kept per query (None: all)
    split_half: bool = False       # score the evaluation half of split_examples only
    needs_gold: bool = False       # leave out queries without a relevant candidate


BENCHMARKS = {
    "dl19": Benchmark("dl19", "TREC DL19 passage (BM25 top-100)", TREC_DL_METRICS,
                      ("qrhead", "icr", "random", "dense", "original", "fusion"),
                      "BM25 first stage (given order)", top_k=100),
    "scifact": Benchmark("scifact", "BEIR SciFact dev (BM25 top-20)", GRADED_METRICS,
                         ("qrhead", "icr", "random", "dense", "original", "fusion"),
                         "BM25 first stage (given order)", top_k=20, needs_gold=True),
    "musique": Benchmark("musique", "MuSiQue (20 paragraphs)", ("ndcg@10", "recall@2", "recall@5"),
                         ("qrhead", "icr", "random", "dense", "bm25", "original"),
                         "original paragraph order", split_half=True),
    "hotpotqa": Benchmark("hotpotqa", "HotpotQA", METRICS,
                          ("qrhead", "icr", "random", "dense", "bm25", "original"),
                          "original candidate order", split_half=True),
}


def load_benchmark(bench: Benchmark, top_k: int | None, max_words: int | None,
                   limit: int | None, data: str | None = None
                   ) -> tuple[list[Example], Qrels, str]:
    """The bench's examples (candidates cut and truncated), graded qrels and a sentence
    saying exactly which queries and candidates they are. ``data`` replaces the shared file by
    another file of the same shape (e.g. TREC DL20 with its BM25 top-100) under the same
    protocol."""
    path = data or shared_path(bench.name)
    examples = load_shared(path)
    split = f"`{Path(path).name}`"
    if bench.split_half:
        examples = split_examples(examples)[1]                 # never the detection half
        split += (f", the evaluation half of `split_examples` (seed {SPLIT_SEED}); heads are "
                  "detected on the other half")
    if bench.needs_gold:
        total = len(examples)
        examples = [e for e in examples if e.gold_ids]
        split += f", the {len(examples)} of {total} queries with a relevant candidate"
    k = top_k or bench.top_k
    examples = [replace(e, documents=tuple(
        Document(truncate_words(d.text, max_words), d.title, d.doc_id)
        for d in e.documents[:k])) for e in examples]
    if limit:
        examples = examples[:limit]
        split += f", first {limit} queries only"
    qrels = {e.qid: e.graded() for e in examples}
    sizes = sorted({len(e.documents) for e in examples})
    split += (f": {len(examples)} queries x {'/'.join(map(str, sizes))} candidates"
              + (f" (top-{k} of the first stage)" if k else ""))
    if max_words:
        split += f", each cut to {max_words} words"
    return examples, qrels, split
