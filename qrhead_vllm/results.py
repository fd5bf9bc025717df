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


@dataclass(frozen=True)
class DocumentFields:
    """The keys a document object may use for each field; errors name the first one."""

    text: tuple[str, ...] = ("text",)
    id: tuple[str, ...] = ("id", "doc_id")
    title: str = "title"


PLAIN_FIELDS = DocumentFields()
QRHEAD_FIELDS = DocumentFields(text=("paragraph_text",), id=("idx",))    # the QRHead/ICR files
ANY_FIELDS = DocumentFields(text=("text", "paragraph_text"), id=("id", "doc_id", "idx"))


def to_document(d: Any, where: str, default_id: DocId | None,
                fields: DocumentFields = PLAIN_FIELDS,
                error: type[InvalidInputError] = InvalidInputError) -> Document:
    """The one reader of a document, whatever shape it comes in (Python API, /v1/rerank and
    /v1/answer, ``qrhead rerank --docs``, data files).

    Accepted: a string (the text), a :class:`Document`, or an object with a string text field,
    an optional string title (an empty one is no title: the prompt gets no title line) and an
    optional string or integer id. A document without an id gets ``default_id``; with
    ``default_id=None`` the id is required, so a bare string is refused.

    Raises:
        error: (:class:`InvalidInputError` or a subclass; a ValueError, so pydantic validators
            may call this) with a message that starts with ``where`` and names the field.
    """
    if isinstance(d, Document):
        text, title, doc_id = d.text, d.title, d.doc_id
    elif isinstance(d, str) and default_id is not None:
        text, title, doc_id = d, None, None
    elif isinstance(d, dict):
        text, title, doc_id = _first(d, fields.text), d.get(fields.title), _first(d, fields.id)
        if text is None:
            raise error(f"{where}: missing field '{fields.text[0]}'; a document is "
                        f"{_shape(fields, default_id)}")
    else:
        raise error(f"{where} must be {_shape(fields, default_id)}, got {type(d).__name__}")
    _check_type(text, str, where, fields.text[0], "a string", error)
    if title is not None:
        _check_type(title, str, where, fields.title, "a string", error)
    if doc_id is None:
        if default_id is None:
            raise error(f"{where}: missing field '{fields.id[0]}'")
        doc_id = default_id
    _check_type(doc_id, (str, int), where, fields.id[0], "a string or an integer", error)
    return Document(text, title or None, doc_id)


def _first(d: dict, names: tuple[str, ...]) -> Any:
    return next((d[k] for k in names if d.get(k) is not None), None)


def _shape(fields: DocumentFields, default_id: DocId | None) -> str:
    if default_id is None:
        return f"an object with '{fields.id[0]}' and string '{fields.text[0]}' fields"
    return f"a string or an object with a string '{fields.text[0]}' field"


def _check_type(value: Any, kind: type | tuple, where: str, name: str, expected: str,
                error: type[InvalidInputError]) -> None:
    if isinstance(value, bool) or not isinstance(value, kind):   # bool is an int, not an id
        raise error(f"{where}: field '{name}' must be {expected}, got {type(value).__name__}")


def prep_docs(docs: Any, doc_ids: Sequence[DocId] | None = None) -> list[Document]:
    """Normalise ``str | Document | dict | list of those`` into Documents with ids
    (:func:`to_document`; a document without an id gets ``doc_ids[i]``, else its position).

    Raises:
        InvalidInputError: on an empty list, a malformed document or mismatched ids.
    """
    if isinstance(docs, (str, Document, dict)):
        docs = [docs]
    if not isinstance(docs, (list, tuple)) or not docs:
        raise InvalidInputError("docs must be a non-empty list of strings or documents")
    if doc_ids is not None and len(doc_ids) != len(docs):
        raise InvalidInputError(f"got {len(doc_ids)} doc_ids for {len(docs)} documents")
    return [to_document(d, f"document {i}", doc_ids[i] if doc_ids is not None else i)
            for i, d in enumerate(docs)]


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
