"""BEIR-style directories: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv`` and a
candidate list (which documents go in each prompt, best first).

Candidate file (``candidates=``, else the first of :data:`CANDIDATE_FILES` in the directory):

* TSV ``query-id <TAB> corpus-id [<TAB> score]``, best first within a query (optional header);
* a TREC run ``qid Q0 docid rank score tag``, ordered by ``rank``;
* JSON ``{qid: [docid, ...]}`` best first;
* the reference's own ``{task}_bm25_top_200.json`` (a list of ``{idx, question, paragraphs:
  [{idx, title, paragraph_text}]}``): documents and queries inline, corpus/queries not read.

Examples are the candidate file's queries in first-appearance order. ``qrels`` keeps every
graded judgement (zero grades too; documents outside the candidates too, as trec_eval's ideal
ranking needs them); gold ids = grade > 0. Only corpus documents some query needs are held.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from qrhead_vllm.datasets.example import DataError, Example
from qrhead_vllm.datasets.records import (field, make_example, read_records, record_document,
                                          sha256_file)
from qrhead_vllm.results import QRHEAD_FIELDS, Document, DocumentFields

CANDIDATE_FILES = ("candidates.tsv", "run.bm25.txt", "candidates.json")
Qrels = dict[str, dict[str, int]]
BEIR_FIELDS = DocumentFields(id=("_id",))


def load_beir_dir(root: str | Path, split: str = "test", candidates: str | Path | None = None
                  ) -> tuple[list[Example], dict[str, str]]:
    """Read a BEIR directory → (examples in candidate order, {file: sha256} of files read)."""
    root = Path(root)
    cand_path = find_candidates(root, candidates)
    qrels_path = root / "qrels" / f"{split}.tsv"
    files = {"qrels": qrels_path, "candidates": cand_path}
    cands, inline = read_candidates(cand_path)
    if inline is None:
        files.update(corpus=root / "corpus.jsonl", queries=root / "queries.jsonl")
    for name, p in files.items():
        if not p.exists():
            raise DataError(f"BEIR directory {root}: missing {name} file {p}")
    qrels = read_qrels(qrels_path)
    if inline is None:
        corpus = read_corpus(files["corpus"], {d for ids in cands.values() for d in ids})
        queries = read_queries(files["queries"], set(cands))
    examples = []
    for qid, doc_ids in cands.items():
        where = f"{cand_path} query {qid!r}"
        if inline is not None:
            query, docs = inline[qid]
        else:
            if qid not in queries:
                raise DataError(f"{where}: query id not found in {files['queries']}")
            missing = [d for d in doc_ids if d not in corpus]
            if missing:
                raise DataError(f"{where}: corpus ids {missing[:5]} not in {files['corpus']}")
            query, docs = queries[qid], [corpus[d] for d in doc_ids]
        judged = qrels.get(qid, {})
        gold = sorted(d for d, g in judged.items() if g > 0)
        examples.append(make_example(qid, query, docs, gold, where, "qrels",
                                     gold_outside_ok=True, qrels=dict(judged)))
    return examples, {str(p): sha256_file(p) for p in files.values()}


def find_candidates(root: Path, candidates: str | Path | None) -> Path:
    if candidates:
        return Path(candidates)
    for name in CANDIDATE_FILES:
        if (root / name).exists():
            return root / name
    raise DataError(f"no candidates in {root}: expected one of {CANDIDATE_FILES} or "
                    "candidates=PATH")


def read_candidates(path: Path) -> tuple[dict[str, list[str]], dict | None]:
    """``{qid: [doc ids, best first]}``, plus ``{qid: (query, docs)}`` for inline formats."""
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            return {str(q): [str(d) for d in ids] for q, ids in data.items()}, None
        inline = {}
        for n, r in enumerate(data, start=1):            # reference / ICR list, docs inline
            docs = [record_document(p, f"{path} record {n}: paragraphs[{i}]", QRHEAD_FIELDS)
                    for i, p in enumerate(r["paragraphs"])]
            inline[str(r.get("idx", r.get("qid")))] = (r["question"], docs)
        return {q: [d.doc_id for d in docs] for q, (_, docs) in inline.items()}, inline
    return read_run_lines(path), None


def read_run_lines(path: Path) -> dict[str, list[str]]:
    """TSV ``qid docid [score]`` (best first) or TREC run lines (ordered by rank)."""
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
                raise DataError(f"{where}: column 'rank' must be a number") from None
            qid, doc = cols[0], cols[2]
        elif len(cols) in (2, 3):                         # TSV: qid docid [score], best first
            qid, doc, rank = cols[0], cols[1], float(len(ranked[cols[0]]))
        else:
            raise DataError(f"{where}: expected 'query-id<TAB>corpus-id[<TAB>score]' or "
                            f"a 6-column TREC run line, got {len(cols)} columns")
        if any(d == doc for _, d in ranked[qid]):
            raise DataError(f"{where}: corpus id {doc!r} listed twice for query {qid!r}")
        ranked[qid].append((rank, doc))
    if not ranked:
        raise DataError(f"{path}: no candidates")
    return {q: [d for _, d in sorted(v, key=lambda x: x[0])] for q, v in ranked.items()}


def read_corpus(path: Path, needed: set[str]) -> dict[str, Document]:
    out = {}
    for where, rec in read_records(path):
        doc_id = str(field(rec, "_id", (str, int), where))
        if doc_id in needed:
            out[doc_id] = record_document(rec, where, BEIR_FIELDS)
    return out


def read_queries(path: Path, needed: set[str]) -> dict[str, str]:
    out = {}
    for where, rec in read_records(path):
        qid = str(field(rec, "_id", (str, int), where))
        if qid in needed:
            out[qid] = field(rec, "text", str, where)
    return out


def read_qrels(path: Path) -> Qrels:
    """``{qid: {doc id: grade}}`` from BEIR TSV (``qid docid grade``, optional header) or TREC
    qrels (``qid 0 docid grade``). Every grade is kept, zeros included."""
    out: Qrels = defaultdict(dict)
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or (n == 1 and line.startswith("query-id")):
            continue
        cols = line.split("\t") if "\t" in line else line.split()
        if len(cols) == 4:
            cols = [cols[0], cols[2], cols[3]]
        if len(cols) != 3:
            raise DataError(f"{path}:{n}: expected 'query-id<TAB>corpus-id<TAB>score'")
        try:
            grade = int(float(cols[2]))
        except ValueError:
            raise DataError(f"{path}:{n}: column 'score' must be a number") from None
        out[cols[0]][cols[1]] = grade
    return dict(out)
