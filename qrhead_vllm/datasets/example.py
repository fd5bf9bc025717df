"""The one labelled-example type every loader returns, and the fixed detection/evaluation split.

Heads are never selected on the examples quality is reported on: detection uses
``split_examples(...)[0]``, the quality benches ``split_examples(...)[1]``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from qrhead_vllm.errors import InvalidInputError
from qrhead_vllm.results import Document

SPLIT_SEED = 0


class DataError(InvalidInputError):
    """A data file that cannot be read; the message says which file, line and field."""


@dataclass(frozen=True)
class Example:
    """One labelled query: candidates in their given order and the ids of the relevant ones.

    ``qrels`` holds graded judgements (doc id → grade, zero grades included) when the source
    has them, *including documents outside the candidates*: trec_eval's ideal ranking for
    nDCG counts every judged document of the query. ``None`` when the source only names gold ids.
    ``answer`` is the gold answer (shared HotpotQA and MuSiQue records carry one), else None.
    """

    qid: str
    query: str
    documents: tuple[Document, ...]
    gold_ids: frozenset[str] = field(default_factory=frozenset)
    qrels: dict[str, int] | None = field(default=None, hash=False, compare=False)
    answer: str | None = None      # the gold answer where the source has one (citation spans)

    def graded(self) -> dict[str, int]:
        """Graded judgements: ``qrels`` if known, else grade 1 for every gold id."""
        return dict(self.qrels) if self.qrels is not None else {g: 1 for g in self.gold_ids}


def split_examples(examples: list[Example], seed: int = SPLIT_SEED
                   ) -> tuple[list[Example], list[Example]]:
    """Deterministic half split by a seeded shuffle of the sorted ids → (detection, evaluation)."""
    ids = sorted(e.qid for e in examples)
    random.Random(seed).shuffle(ids)
    detect_ids = set(ids[: len(ids) // 2])
    return ([e for e in examples if e.qid in detect_ids],
            [e for e in examples if e.qid not in detect_ids])
