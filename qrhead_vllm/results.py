"""Inputs and outputs of the Python API (the rerankers shape): Document, Result, RankedResults."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from qrhead_vllm.errors import InvalidInputError

DocId = str | int


@dataclass(frozen=True)
class Document:
    """A document to rank. ``doc_id`` defaults to its position in the input list."""

    text: str
    title: str | None = None
    doc_id: DocId | None = None


@dataclass(frozen=True)
class Result:
    """One ranked document."""

    document: Document
    score: float
    rank: int           # 1 = best
    index: int          # position in the input list

    @property
    def doc_id(self) -> DocId:
        return self.document.doc_id


@dataclass(frozen=True)
class WindowInfo:
    """How a ranking that did not fit one prompt was made (see :mod:`qrhead_vllm.windows`).

    A document's ``score`` is from the last prompt that scored it: scores of the documents in
    ``rescored`` (one shared prompt) compare with each other, the others only within their
    window. The order of :class:`RankedResults` is the ranking.
    """

    strategy: str
    num_windows: int                      # first-pass windows
    window_of: list[int]                  # first-pass window of each input document
    window_scores: list[float]            # first-pass score of each input document
    rescored: list[int]                   # input indices scored together in the final prompt
    prompt_tokens: int                    # tokens prefilled in all (real + null prompts)


@dataclass(frozen=True)
class RankedResults:
    """Documents of one query, best first."""

    query: str
    results: list[Result]
    head_scores: list[list[float]] | None = field(default=None, repr=False)
    """Per-head document scores ``[num_heads][num_docs]`` in input order, when asked for."""
    windows: WindowInfo | None = field(default=None, repr=False)
    """Set when the documents were ranked in several prompts (windows)."""
    prompt_tokens: int = 0
    """Tokens prefilled for this ranking: real and null prompts, of every window."""

    def top_k(self, k: int) -> list[Result]:
        return self.results[:k]

    def get_result_by_docid(self, doc_id: DocId) -> Result:
        for r in self.results:
            if r.doc_id == doc_id:
                return r
        raise KeyError(doc_id)

    def __iter__(self):
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)


def prep_docs(docs: Any, doc_ids: Sequence[DocId] | None = None) -> list[Document]:
    """Normalise ``str | Document | dict | list of those`` into Documents with ids.

    Raises:
        InvalidInputError: on an empty list, a non-string text or mismatched ids.
    """
    if isinstance(docs, (str, Document, dict)):
        docs = [docs]
    if not isinstance(docs, (list, tuple)) or not docs:
        raise InvalidInputError("docs must be a non-empty list of strings or documents")
    if doc_ids is not None and len(doc_ids) != len(docs):
        raise InvalidInputError(f"got {len(doc_ids)} doc_ids for {len(docs)} documents")
    out = []
    for i, d in enumerate(docs):
        doc = _one_doc(d, i)
        default_id = doc_ids[i] if doc_ids is not None else i
        out.append(Document(doc.text, doc.title, default_id if doc.doc_id is None else doc.doc_id))
    return out


def _one_doc(d: Any, i: int) -> Document:
    if isinstance(d, Document):
        doc = d
    elif isinstance(d, str):
        doc = Document(d)
    elif isinstance(d, dict) and "text" in d:
        doc = Document(d["text"], d.get("title"), d.get("id", d.get("doc_id")))
    else:
        raise InvalidInputError(f"document {i} must be a string or have a 'text' field, "
                                f"got {type(d).__name__}")
    if not isinstance(doc.text, str) or (doc.title is not None and not isinstance(doc.title, str)):
        raise InvalidInputError(f"document {i}: text and title must be strings")
    return doc


def ranked(query: str, docs: list[Document], scores: Sequence[float],
           head_scores: list[list[float]] | None = None, prompt_tokens: int = 0
           ) -> RankedResults:
    """Sort by score, descending; ties keep input order (Python's sort is stable)."""
    order = sorted(range(len(docs)), key=lambda i: -scores[i])
    return ordered(query, docs, order, scores, head_scores, prompt_tokens=prompt_tokens)


def ordered(query: str, docs: list[Document], order: Sequence[int], scores: Sequence[float],
            head_scores: list[list[float]] | None = None,
            windows: WindowInfo | None = None, prompt_tokens: int = 0) -> RankedResults:
    """Results in a given order (input indices, best first) with each document's score."""
    results = [Result(docs[i], float(scores[i]), r, i) for r, i in enumerate(order, start=1)]
    return RankedResults(query, results, head_scores, windows, prompt_tokens)
