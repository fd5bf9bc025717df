"""JSON / JSONL record formats → :class:`Example`, with errors that name the file, line and field.

* ``shared`` (alias ``hotpotqa``) — the shared data files (HotpotQA, TREC DL, SciFact,
  MuSiQue): ``{id, question, documents: [{id, title, text, ...}], gold_ids, qrels?}``. ``qrels``
  (graded, may name documents outside the candidates) is kept on the example; an empty title is
  no title.
* ``qrhead`` — the QRHead/ICR JSON (an array, or JSONL of the same records)
  ``{idx, question, paragraphs: [{idx, title, paragraph_text, is_supporting}], gt_docs}``; gold is
  ``gt_docs`` when present, else the paragraphs with ``is_supporting`` true.
* ``jsonl`` — plain ``{id?, query, documents: [str | {id?, title?, text}], gold: [ids],
  answer?}``; string documents get ids ``"0"``, ``"1"``, … by position.

Nothing is skipped silently; ids are normalised to strings.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

from qrhead_vllm.datasets.example import DataError, Example
from qrhead_vllm.results import PLAIN_FIELDS, QRHEAD_FIELDS, Document, DocumentFields, to_document


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def combined_sha256(file_hashes: dict[str, str]) -> str:
    """The content hash of a data set: the file's own sha256, or for several files the sha256
    of the sorted ``[name, sha]`` pairs."""
    if len(file_hashes) == 1:
        return next(iter(file_hashes.values()))
    blob = json.dumps(sorted((Path(k).name, v) for k, v in file_hashes.items()))
    return hashlib.sha256(blob.encode()).hexdigest()


def read_records(path: Path) -> Iterator[tuple[str, dict]]:
    """Yield ``(location, record)`` from a JSON array file or a JSONL file."""
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from e
        for i, rec in enumerate(items, start=1):
            yield _as_record(rec, f"{path} record {i}")
        return
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: invalid JSON: {e.msg}") from e
        yield _as_record(rec, f"{path}:{n}")


def _as_record(rec: Any, where: str) -> tuple[str, dict]:
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    return where, rec


def field(rec: dict, name: str, kind: type | tuple, where: str, *, required: bool = True,
          nonempty: bool = True) -> Any:
    """``rec[name]`` checked for presence, type and (for str/list) emptiness."""
    if name not in rec or rec[name] is None:
        if required:
            raise DataError(f"{where}: missing field '{name}'")
        return None
    value = rec[name]
    if isinstance(value, bool) and kind in (int, (str, int)):
        raise DataError(f"{where}: field '{name}' must be {_kind(kind)}, got bool")
    if not isinstance(value, kind):
        raise DataError(f"{where}: field '{name}' must be {_kind(kind)}, "
                        f"got {type(value).__name__}")
    if nonempty and isinstance(value, (str, list)) and not (value.strip() if isinstance(value, str)
                                                             else value):
        raise DataError(f"{where}: field '{name}' is empty")
    return value


def _kind(kind) -> str:
    names = {str: "a string", int: "an integer", list: "a list", dict: "an object", bool: "a bool"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def make_example(qid: str, query: str, docs: list[Document], gold: list, where: str,
                 gold_field: str, gold_outside_ok: bool = False,
                 qrels: dict[str, int] | None = None, answer: str | None = None) -> Example:
    """Check ids (unique docs, gold among docs) and build the Example."""
    ids = [d.doc_id for d in docs]
    dup = first_duplicate(ids)
    if dup is not None:
        raise DataError(f"{where}: document id {dup!r} appears twice")
    gold_ids = frozenset(str(g) for g in gold)
    missing = sorted(gold_ids - set(ids))
    if missing and not gold_outside_ok:
        raise DataError(f"{where}: field '{gold_field}' names {missing} which are not "
                        f"among the document ids")
    return Example(qid, query.strip(), tuple(docs), gold_ids, qrels,
                   (answer or "").strip() or None)


def first_duplicate(items) -> Any:
    seen = set()
    for x in items:
        if x in seen:
            return x
        seen.add(x)
    return None


def record_document(d: Any, where: str, fields: DocumentFields = PLAIN_FIELDS,
                    default_id: str | None = None) -> Document:
    """A document of a data file (:func:`~qrhead_vllm.results.to_document`), id as a string;
    the id is required unless ``default_id`` is given."""
    doc = to_document(d, where, default_id, fields, DataError)
    return replace(doc, doc_id=str(doc.doc_id))


def parse_shared(rec: dict, where: str) -> Example:
    qid = field(rec, "id", (str, int), where)
    docs = [record_document(d, f"{where}: documents[{i}]")
            for i, d in enumerate(field(rec, "documents", list, where))]
    gold = field(rec, "gold_ids", list, where, nonempty=False)
    raw = field(rec, "qrels", dict, where, required=False, nonempty=False)
    qrels = None
    if raw is not None:
        try:
            qrels = {str(d): int(g) for d, g in raw.items()}
        except (TypeError, ValueError):
            raise DataError(f"{where}: field 'qrels' must map ids to integer grades") from None
    return make_example(str(qid), field(rec, "question", str, where), docs, gold, where,
                        "gold_ids", qrels=qrels,
                        answer=field(rec, "answer", str, where, required=False, nonempty=False))


def parse_qrhead(rec: dict, where: str) -> Example:
    qid = rec.get("idx", rec.get("id"))
    if qid is None or isinstance(qid, bool) or not isinstance(qid, (str, int)):
        raise DataError(f"{where}: missing field 'idx' (string or integer)")
    paragraphs = field(rec, "paragraphs", list, where)
    docs = [record_document(p, f"{where}: paragraphs[{i}]", QRHEAD_FIELDS)
            for i, p in enumerate(paragraphs)]
    if "gt_docs" in rec:
        gold, gold_field = field(rec, "gt_docs", list, where, nonempty=False), "gt_docs"
    elif any("is_supporting" in p for p in paragraphs):
        gold = [d.doc_id for d, p in zip(docs, paragraphs) if p.get("is_supporting") is True]
        gold_field = "is_supporting"
    else:
        raise DataError(f"{where}: no gold documents: needs field 'gt_docs' or "
                        f"'is_supporting' on the paragraphs")
    return make_example(str(qid), field(rec, "question", str, where), docs, gold, where,
                        gold_field)


def parse_plain(rec: dict, where: str, default_qid: str) -> Example:
    qid = field(rec, "id", (str, int), where, required=False)
    raw = field(rec, "documents", list, where)
    docs = [record_document(d, f"{where}: documents[{i}]", default_id=str(i))
            for i, d in enumerate(raw)]
    gold = field(rec, "gold", list, where, nonempty=False)
    return make_example(str(qid) if qid is not None else default_qid,
                        field(rec, "query", str, where), docs, gold, where, "gold",
                        answer=field(rec, "answer", str, where, required=False, nonempty=False))


def guess_record_format(path: Path) -> str:
    """By the keys of the first record: ``qrhead``, ``shared`` or ``jsonl``."""
    for where, rec in read_records(path):
        if "paragraphs" in rec:
            return "qrhead"
        if "question" in rec and "documents" in rec:
            return "shared"
        if "query" in rec:
            return "jsonl"
        raise DataError(f"{where}: cannot tell the format from fields {sorted(rec)}; "
                        "expected 'paragraphs' (qrhead), 'question'+'documents' "
                        "(shared/hotpotqa) or 'query' (jsonl); or pass format=")
    raise DataError(f"{path}: no records")


def load_record_file(path: Path, fmt: str) -> list[Example]:
    """Every record of a JSON/JSONL file in format ``fmt`` (``shared``, ``qrhead``, ``jsonl``)."""
    parsers = {"shared": parse_shared, "hotpotqa": parse_shared, "qrhead": parse_qrhead}
    examples = []
    for n, (where, rec) in enumerate(read_records(path), start=1):
        examples.append(parse_plain(rec, where, str(n)) if fmt == "jsonl"
                        else parsers[fmt](rec, where))
    if not examples:
        raise DataError(f"{path}: no records")
    return examples
