"""BEIR-style detection data: a directory with ``corpus.jsonl``, ``queries.jsonl``,
``qrels/<split>.tsv`` and a candidate list (which documents go in each prompt).

Candidate file (``candidates.tsv`` in the directory, or ``DetectConfig.candidates``), either

* TSV ``query-id <TAB> corpus-id [<TAB> score]``, one candidate per line, best first within a
  query (an optional header line starting with ``query-id`` is allowed), or
* a TREC run file ``qid Q0 docid rank score tag`` (whitespace separated), ordered by ``rank``.

Examples are the queries of the candidate file, in first-appearance order; gold = qrels entries
with score > 0. Gold documents outside the candidate list are kept (they count in nDCG's ideal
ranking, as in the reference's pytrec_eval evaluation). Only the corpus documents that some
query needs are held in memory.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from qrhead_vllm.data import Example
from qrhead_vllm.detect.inputs import (
    DetectInputError, field, make_example, read_records, sha256_file,
)
from qrhead_vllm.results import Document


def load_beir(root: Path, beir_split: str = "test", candidates: str | None = None
              ) -> tuple[list[Example], dict]:
    """Read a BEIR directory → (examples, {file: sha256} of the files read)."""
    files = {"corpus": root / "corpus.jsonl", "queries": root / "queries.jsonl",
             "qrels": root / "qrels" / f"{beir_split}.tsv",
             "candidates": Path(candidates) if candidates else root / "candidates.tsv"}
    for name, p in files.items():
        if not p.exists():
            raise DetectInputError(f"BEIR directory {root}: missing {name} file {p}")
    cands = read_candidates(files["candidates"])
    needed = {d for ids in cands.values() for d in ids}
    corpus = read_corpus(files["corpus"], needed)
    queries = read_queries(files["queries"], set(cands))
    qrels = read_qrels(files["qrels"])
    examples = []
    for qid, doc_ids in cands.items():
        where = f"{files['candidates']} query {qid!r}"
        if qid not in queries:
            raise DetectInputError(f"{where}: query id not found in {files['queries']}")
        missing = [d for d in doc_ids if d not in corpus]
        if missing:
            raise DetectInputError(f"{where}: corpus ids {missing[:5]} not in {files['corpus']}")
        docs = [corpus[d] for d in doc_ids]
        examples.append(make_example(qid, queries[qid], docs, sorted(qrels.get(qid, ())),
                                     where, "qrels", gold_outside_ok=True))
    return examples, {str(p): sha256_file(p) for p in files.values()}


def read_candidates(path: Path) -> dict[str, list[str]]:
    """``{query id: [doc ids, best first]}`` from a TSV or TREC run file."""
    ranked: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or (n == 1 and line.startswith("query-id")):
            continue
        cols = line.split("\t") if "\t" in line else line.split()
        where = f"{path}:{n}"
        if len(cols) == 6:                               # TREC: qid Q0 docid rank score tag
            try:
                rank = float(cols[3])
            except ValueError:
                raise DetectInputError(f"{where}: column 'rank' must be a number") from None
            qid, doc = cols[0], cols[2]
        elif len(cols) in (2, 3):                         # TSV: qid docid [score], best first
            qid, doc, rank = cols[0], cols[1], float(len(ranked[cols[0]]))
        else:
            raise DetectInputError(f"{where}: expected 'query-id<TAB>corpus-id[<TAB>score]' or "
                                   f"a 6-column TREC run line, got {len(cols)} columns")
        if any(d == doc for _, d in ranked[qid]):
            raise DetectInputError(f"{where}: corpus id {doc!r} listed twice for query {qid!r}")
        ranked[qid].append((rank, doc))
    if not ranked:
        raise DetectInputError(f"{path}: no candidates")
    return {q: [d for _, d in sorted(v, key=lambda x: x[0])] for q, v in ranked.items()}


def read_corpus(path: Path, needed: set[str]) -> dict[str, Document]:
    out = {}
    for where, rec in read_records(path):
        doc_id = str(field(rec, "_id", (str, int), where))
        if doc_id in needed:
            title = field(rec, "title", str, where, required=False, nonempty=False)
            out[doc_id] = Document(field(rec, "text", str, where, nonempty=False),
                                   title or None, doc_id)
    return out


def read_queries(path: Path, needed: set[str]) -> dict[str, str]:
    out = {}
    for where, rec in read_records(path):
        qid = str(field(rec, "_id", (str, int), where))
        if qid in needed:
            out[qid] = field(rec, "text", str, where)
    return out


def read_qrels(path: Path) -> dict[str, set[str]]:
    """``{query id: {relevant corpus ids}}`` (score > 0 only, as the reference drops zeros)."""
    out: dict[str, set[str]] = defaultdict(set)
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or (n == 1 and line.startswith("query-id")):
            continue
        cols = line.split("\t")
        if len(cols) != 3:
            raise DetectInputError(f"{path}:{n}: expected 'query-id<TAB>corpus-id<TAB>score'")
        try:
            score = float(cols[2])
        except ValueError:
            raise DetectInputError(f"{path}:{n}: column 'score' must be a number") from None
        if score > 0:
            out[cols[0]].add(cols[1])
    return out

