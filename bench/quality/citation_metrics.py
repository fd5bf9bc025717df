"""Pure arithmetic of the citation bench: cited sets against the labelled supporting paragraphs.

A method names the documents an answer cites (a set of indices into the question's documents)
and, where it scores every document, a ranking. Per question: precision and recall of the cited
set against the gold set, recall@k of the ranking; per row: their means over questions (macro),
with the forward passes and seconds spent per answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence


def precision_recall(cited: Iterable[int], gold: Iterable[int]) -> tuple[float, float]:
    """(precision, recall) of one cited set. Citing nothing has precision 0 (the answer names
    no source, so none of its sources is right); an empty gold set has recall 1."""
    cited, gold = set(cited), set(gold)
    hit = len(cited & gold)
    return (hit / len(cited) if cited else 0.0), (hit / len(gold) if gold else 1.0)


def top_k(scores: Sequence[float], k: int) -> list[int]:
    """Indices of the ``k`` highest scores, best first; ties keep the document order."""
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    return order[:k]


def recall_at(scores: Sequence[float], gold: Iterable[int], k: int = 2) -> float:
    """Share of the gold documents among the top ``k`` by score."""
    return precision_recall(top_k(scores, k), gold)[1]


@dataclass
class RowStats:
    """One row of the table, accumulated question by question."""

    precision: list[float] = field(default_factory=list)
    recall: list[float] = field(default_factory=list)
    recall_at_2: list[float] = field(default_factory=list)
    cited: list[int] = field(default_factory=list)
    passes: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def add(self, cited: Sequence[int], gold: Sequence[int], scores: Sequence[float] | None,
            passes: float, seconds: float) -> None:
        p, r = precision_recall(cited, gold)
        self.precision.append(p)
        self.recall.append(r)
        if scores is not None:
            self.recall_at_2.append(recall_at(scores, gold, 2))
        self.cited.append(len(set(cited)))
        self.passes.append(passes)
        self.seconds.append(seconds)

    @property
    def n(self) -> int:
        return len(self.precision)

    def means(self) -> dict[str, float | None]:
        """Percentages for P / R / recall@2 (None where the method gives no ranking)."""
        def mean(xs, scale=1.0):
            return scale * sum(xs) / len(xs) if xs else None
        return {"precision": mean(self.precision, 100), "recall": mean(self.recall, 100),
                "recall@2": mean(self.recall_at_2, 100), "cited": mean(self.cited),
                "passes": mean(self.passes), "seconds": mean(self.seconds), "n": self.n}
