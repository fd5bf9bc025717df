"""Prompts for the speed bench: real HotpotQA prompts, and longer ones built from real documents.

Every prompt goes through ``QRHeadRanker.prepare`` (the production prompt builder), so the
engines see exactly what a user's ``rank`` call would send. Long prompts concatenate whole
documents of several HotpotQA records (the shared file has 70 × 10 paragraphs, ~139 tokens
each), so their token statistics are those of real text, not of repeated filler.
"""

from __future__ import annotations

from dataclasses import dataclass

from qrhead_vllm.backends import MassRequest
from qrhead_vllm.core import truncate_words
from qrhead_vllm.datasets import Example
from qrhead_vllm.results import Document

# SmolLM2 tokens of the template around the documents (prefix, instruction, query, suffix),
# plus the null twin's margin: kept free when filling a prompt up to a target length.
TEMPLATE_MARGIN = 96


@dataclass(frozen=True)
class Item:
    """One prompt of the bench: a label for tables and its scoring request (real + null)."""

    label: str
    request: MassRequest
    num_docs: int

    @property
    def tokens(self) -> int:
        return self.request.real.num_tokens

    def without_null(self) -> MassRequest:
        return MassRequest(self.request.real, None, self.request.heads)


def all_documents(examples: list[Example]) -> list[Document]:
    return [d for e in examples for d in e.documents]


def hotpot_items(ranker, examples: list[Example], count: int) -> list[Item]:
    """The first ``count`` records as they are: query + its 10 candidates (~1.2-1.6K tokens)."""
    out = []
    for e in examples[:count]:
        _, req = ranker.prepare(e.query, list(e.documents))
        out.append(Item(f"hotpot-{e.qid[:6]}", req, len(e.documents)))
    return out


def length_item(ranker, examples: list[Example], target: int, start: int = 0) -> Item:
    """A prompt of at most ``target`` tokens: the query of record ``start``, then whole real
    documents from that record onwards, skipping any too long for the space left."""
    docs = all_documents(examples)
    tok = ranker.backend.tokenizer
    sizes = [len(tok(f"{d.title}\n{d.text}", add_special_tokens=False)["input_ids"]) + 6
             for d in docs]                            # + "[i] " and the separator
    query = examples[start % len(examples)].query
    first = (start * 10) % len(docs)
    chosen, used = [], TEMPLATE_MARGIN
    for i in range(len(docs)):
        j = (first + i) % len(docs)
        if used + sizes[j] <= target:      # skip a document too long for the space left
            chosen.append(docs[j])
            used += sizes[j]
        if used > target - 16:
            break
    _, req = ranker.prepare(query, chosen)
    while req.real.num_tokens > target or (req.null and req.null.num_tokens > target):
        chosen.pop()                      # the estimate was short: drop documents until it fits
        _, req = ranker.prepare(query, chosen)
    return Item(f"{round(target / 512) / 2:g}K", req, len(chosen))   # nearest 0.5K: 1.5K, 8K


def docs_item(ranker, examples: list[Example], num_docs: int, words: int) -> Item:
    """``num_docs`` real documents, each cut to its first ``words`` words (so that 200 of them
    fit a small model's context), with the query of the first record."""
    docs = all_documents(examples)
    if num_docs > len(docs):
        raise ValueError(f"only {len(docs)} documents in the data set, asked for {num_docs}")
    cut = [Document(truncate_words(d.text, words), d.title, d.doc_id) for d in docs[:num_docs]]
    _, req = ranker.prepare(examples[0].query, cut)
    return Item(f"{num_docs} docs", req, num_docs)
