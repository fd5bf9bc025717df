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

import json
from pathlib import Path

import numpy as np

from qrhead_vllm.core import truncate_words
from qrhead_vllm.data import Example
from qrhead_vllm.results import Document

from bench.metrics import Qrels, positive_qrels

CANDIDATE_FILES = ("run.bm25.txt", "candidates.json")


def read_jsonl(path: Path, keep: set[str] | None = None) -> dict[str, dict]:
    """``_id`` → record, keeping only ``keep`` ids when given (corpora can be gigabytes)."""
    out = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                if keep is None or str(r["_id"]) in keep:
                    out[str(r["_id"])] = r
    return out


def read_qrels(path: Path) -> Qrels:
    qrels: Qrels = {}
    for i, line in enumerate(Path(path).read_text().splitlines()):
        parts = line.strip().split("\t")
        if len(parts) < 3 or (i == 0 and not parts[2].lstrip("-").isdigit()):
            continue                                              # header or blank line
        qrels.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    return qrels


def read_trec_run(path: Path) -> dict[str, list[str]]:
    """TREC run → qid: doc ids by rank (query order = first appearance in the file)."""
    rows: dict[str, list[tuple[int, str]]] = {}
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if len(parts) >= 4:
            rows.setdefault(parts[0], []).append((int(parts[3]), parts[2]))
    return {q: [d for _, d in sorted(r, key=lambda x: x[0])] for q, r in rows.items()}


def read_candidates(path: Path) -> tuple[dict[str, list[str]], dict[str, Example] | None]:
    """Candidate ids per query; for the reference's list format also the ready examples."""
    if path.suffix != ".json":
        return read_trec_run(path), None
    data = json.loads(path.read_text())
    if isinstance(data, dict):
        return {str(q): [str(d) for d in ids] for q, ids in data.items()}, None
    examples = {}
    for r in data:                                   # reference / ICR format, docs inline
        qid = str(r.get("idx", r.get("qid")))
        docs = tuple(Document(p["paragraph_text"], p.get("title"), str(p["idx"]))
                     for p in r["paragraphs"])
        examples[qid] = Example(qid, r["question"], docs)
    return {q: [d.doc_id for d in e.documents] for q, e in examples.items()}, examples


def find_candidates(beir_dir: Path, candidates: str | None) -> Path:
    if candidates:
        return Path(candidates)
    for name in CANDIDATE_FILES:
        if (beir_dir / name).exists():
            return beir_dir / name
    raise FileNotFoundError(f"no candidates in {beir_dir}: expected one of {CANDIDATE_FILES} "
                            "or --candidates PATH")


def sample_qids(qids: list[str], num_queries: int | None, seed: int) -> list[str]:
    """The reference's subsample: legacy NumPy seeding, indices in the order drawn."""
    if num_queries is None or len(qids) <= num_queries:
        return qids
    idx = np.random.RandomState(seed).choice(len(qids), num_queries, replace=False)
    return [qids[i] for i in idx]


def load_beir(beir_dir: str | Path, candidates: str | None = None, top_k: int = 200,
              num_queries: int | None = 512, seed: int = 42, max_words: int | None = None
              ) -> tuple[list[Example], Qrels]:
    """Examples (candidates in first-stage order, top_k kept, words truncated) and their qrels."""
    beir_dir = Path(beir_dir)
    qrels = read_qrels(beir_dir / "qrels" / "test.tsv")
    cands, inline = read_candidates(find_candidates(beir_dir, candidates))
    qids = sample_qids([q for q in cands if q in qrels], num_queries, seed)
    if inline is None:
        queries = read_jsonl(beir_dir / "queries.jsonl", set(qids))
        need = {d for q in qids for d in cands[q][:top_k]}
        corpus = read_jsonl(beir_dir / "corpus.jsonl", need)
        if need - corpus.keys():          # say so: silently shorter lists would skew nDCG
            print(f"warning: {len(need - corpus.keys())} candidate ids are not in corpus.jsonl")
        inline = {q: Example(q, queries[q]["text"], tuple(
            Document(corpus[d]["text"], corpus[d].get("title") or None, d)
            for d in cands[q][:top_k] if d in corpus)) for q in qids}
    examples = []
    for q in qids:
        e = inline[q]
        docs = tuple(Document(truncate_words(d.text, max_words), d.title, d.doc_id)
                     for d in e.documents[:top_k])
        examples.append(Example(q, e.query, docs, frozenset(positive_qrels({q: qrels[q]})
                                                            .get(q, {}))))
    return examples, {q: qrels[q] for q in qids}
