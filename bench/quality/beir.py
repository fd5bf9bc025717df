"""A BEIR-style directory plus first-stage candidates → labelled examples (issue 6, item 4).

Expected layout (BEIR's own files, plus one candidates file)::

    DIR/corpus.jsonl      {"_id": ..., "title": ..., "text": ...} per line
    DIR/queries.jsonl     {"_id": ..., "text": ...} per line
    DIR/qrels/test.tsv    query-id <TAB> corpus-id <TAB> score, with a header line
    DIR/run.bm25.txt      TREC run: qid Q0 docid rank score tag   (or --candidates PATH)
    DIR/candidates.json   alternatively {qid: [docid, ...]} best first

A candidates JSON may also be the reference's own `{task}_bm25_top_200.json` (a list of
``{idx, question, paragraphs: [{idx, title, paragraph_text}]}``); then the corpus and queries
files are not read for its documents, and the query order is the file's, as in the paper.

Sampling follows the reference: queries are taken in candidates-file order (those judged in
qrels/test.tsv), and when there are more than ``num_queries`` of them,
``np.random.seed(seed); np.random.choice(n, num_queries, replace=False)`` picks the subset.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from qrhead_vllm.core import truncate_words
from qrhead_vllm.datasets import Example, load_beir_dir
from qrhead_vllm.results import Document

from bench.quality.metrics import Qrels


def sample_qids(qids: list[str], num_queries: int | None, seed: int) -> list[str]:
    """The reference's subsample: legacy NumPy seeding, indices in the order drawn."""
    if num_queries is None or len(qids) <= num_queries:
        return qids
    idx = np.random.RandomState(seed).choice(len(qids), num_queries, replace=False)
    return [qids[i] for i in idx]


def load_beir(beir_dir: str | Path, candidates: str | None = None, top_k: int = 200,
              num_queries: int | None = 512, seed: int = 42, max_words: int | None = None
              ) -> tuple[list[Example], Qrels]:
    """Examples (candidates in first-stage order, top_k kept, words truncated) and their qrels.

    Reading is the package's one BEIR loader (:func:`qrhead_vllm.datasets.load_beir_dir`);
    this adds the reference's query sampling, candidate cut and word truncation.
    """
    loaded, _ = load_beir_dir(beir_dir, "test", candidates)
    judged = {e.qid: e for e in loaded if e.qrels}
    qids = sample_qids([e.qid for e in loaded if e.qid in judged], num_queries, seed)
    examples = []
    for q in qids:
        e = judged[q]
        docs = tuple(Document(truncate_words(d.text, max_words), d.title, d.doc_id)
                     for d in e.documents[:top_k])
        examples.append(replace(e, documents=docs))
    return examples, {q: judged[q].qrels for q in qids}
