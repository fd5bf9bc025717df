"""Which tokens' attention a detection run scores: the registry behind ``DetectConfig.span``.

* ``question`` (retrieval heads): the ranking prompt as ``/v1/rerank`` builds it; the span is
  the instruction, the question and the chat suffix (docs/method.md §1.3).
* ``answer`` (citation heads): the same prompt followed by the example's gold answer as the
  assistant's reply (teacher forcing); the span is the answer's tokens. Calibration replaces
  the answer by the null text ("N/A") and keeps everything before it, as the question span
  replaces the question: docs/detection.md says why.

Either way the target is the example's gold documents. Adding a span is one entry here and
one name in :data:`qrhead_vllm.heads.SpanName`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from qrhead_vllm.backends import MassRequest
from qrhead_vllm.core.prompt import Passage, build_answer_prompts, truncate_words
from qrhead_vllm.datasets import DataError, Example


@dataclass(frozen=True)
class Span:
    """How one span kind builds an example's scoring request."""

    prepare: Callable[[Any, Example], tuple[list, MassRequest]]   # (ranker, example)
    # The example's content beyond question/documents/gold that the span reads (checkpoint
    # keys); the driver calls it on every example before any actor starts, so it validates.
    key_parts: Callable[[Example], list]


def _question(ranker, ex: Example) -> tuple[list, MassRequest]:
    return ranker.prepare(ex.query, list(ex.documents))


def _gold_answer(ex: Example) -> str:
    if ex.answer is None:
        raise DataError(f"example {ex.qid!r} has no 'answer': span='answer' needs the gold "
                        "answer of every example (HotpotQA and MuSiQue records carry one)")
    return ex.answer


def _answer(ranker, ex: Example) -> tuple[list, MassRequest]:
    answer = _gold_answer(ex)
    docs, _ = ranker.prepare(ex.query, list(ex.documents))      # validation, context check
    passages = [Passage(truncate_words(d.text, ranker.max_words), d.title) for d in docs]
    real, null = build_answer_prompts(ranker.backend.tokenizer, ranker.template, ex.query,
                                      passages, answer, ranker.null_query)
    return docs, MassRequest(real, null if ranker.calibrate else None, ranker.head_pairs)


SPANS: dict[str, Span] = {
    "question": Span(_question, lambda ex: []),
    "answer": Span(_answer, lambda ex: [_gold_answer(ex)]),   # the driver checks every one
}
