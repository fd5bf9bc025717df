"""Ranking more documents than fit one prompt: windows, and scores comparable across them.

QRHead scores a document by the query's calibrated attention mass on it. Attention is a softmax
over the whole prompt, so a score is exactly comparable only with scores from the same prompt.
Two strategies (``WindowConfig.strategy``), both driven by the same plan/score loop:

``rescore`` (default)
    1. pack the documents, in the given order, into the fewest windows that fit, balanced to
       similar token counts (every window spreads its attention over a similar amount of text);
    2. score every window (the windows are independent: one batched engine call);
    3. take finalists round-robin by rank within their window (every window's best first, then
       every window's second, ...; window scores are not comparable, ranks within a window are)
       as many as fit one prompt (or ``finalists``), and score them **together in one prompt**.
    Result: finalists by their shared-prompt score, then the rest by (rank in window, score).
``sliding``
    RankGPT's sliding window: ``window_docs`` documents at a time from the bottom of the given
    order to the top, ``step`` apart; each window is re-ordered by its QRHead scores, so strong
    documents bubble up into the next window. Sequential (each window depends on the last).

A ranking that fits one prompt never windows: its scores are those of a plain call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Generator, Literal, Sequence

from qrhead_vllm.core.prompt import render
from qrhead_vllm.errors import ContextOverflowError, InvalidInputError

# Our token estimate sums per-passage tokenisations; merges at the seams can differ by a token
# or two per passage. The plan's budget keeps this margin; a window that still overflows is an
# error the ranker reports (it never silently truncates).
SAFETY_TOKENS = 16

Groups = list[list[int]]                  # windows: lists of input indices, in prompt order
Plan = Generator[Groups, list[list[float]], "PlanResult"]


@dataclass(frozen=True)
class WindowConfig:
    """How to rank documents that do not fit one prompt.

    Args:
        strategy: ``"rescore"`` (windows, then finalists together) or ``"sliding"`` (RankGPT).
        window_tokens: tokens per prompt; None = the model's context (``max_model_len``).
        window_docs: documents per window; None = as many as fit (``sliding`` default 20).
        step: ``sliding`` only: how far each window moves up (RankGPT: 10).
        finalists: ``rescore`` only: documents re-scored together; None = as many as fit.
        always: window even when everything fits one prompt (for measurements).
    """

    strategy: Literal["rescore", "sliding"] = "rescore"
    window_tokens: int | None = None
    window_docs: int | None = None
    step: int = 10
    finalists: int | None = None
    always: bool = False

    def __post_init__(self):
        if self.strategy not in ("rescore", "sliding"):
            raise InvalidInputError(f"unknown window strategy {self.strategy!r}; "
                                    "choose 'rescore' or 'sliding'")
        for name in ("window_tokens", "window_docs", "finalists"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InvalidInputError(f"{name} must be >= 1, got {value}")
        if self.step < 1:
            raise InvalidInputError(f"step must be >= 1, got {self.step}")


@dataclass(frozen=True)
class PlanResult:
    """What a plan ends with: the final order (input indices) and each document's score."""

    order: list[int]
    scores: list[float]
    window_of: list[int]                  # first-pass window of each input document
    window_scores: list[float]            # first-pass score of each input document
    rescored: list[int] = field(default_factory=list)   # input indices scored together last
    num_windows: int = 1


def pack_windows(token_counts: Sequence[int], budget: int,
                 max_docs: int | None = None) -> list[list[int]]:
    """Contiguous groups of indices, each summing to <= budget tokens (and <= max_docs),
    balanced in size.

    Raises:
        ContextOverflowError: one passage alone is over the budget.
    """
    for i, n in enumerate(token_counts):
        if n > budget:
            raise ContextOverflowError(
                f"passage {i} has about {n} tokens but a scoring window holds {budget} after "
                "the query; split it into shorter passages")
    total, count = sum(token_counts), len(token_counts)
    windows = max(1, math.ceil(total / budget), math.ceil(count / (max_docs or count)))
    while True:
        target = math.ceil(total / windows)
        per_window = math.ceil(count / windows)
        groups, current, size = [], [], 0
        for i, n in enumerate(token_counts):
            if current and (size + n > budget or size >= target or len(current) >= per_window):
                groups.append(current)
                current, size = [], 0
            current.append(i)
            size += n
        groups.append(current)
        if len(groups) <= windows or windows >= count:
            return groups
        windows += 1  # greedy balancing overshot: allow one more window


def rescore_plan(token_counts: Sequence[int], budget: int, cfg: WindowConfig) -> Plan:
    """The ``rescore`` strategy (module docstring) as a plan: yields windows, gets scores."""
    n = len(token_counts)
    groups = pack_windows(token_counts, budget, cfg.window_docs)
    window_of, first = [0] * n, [0.0] * n
    scores = yield groups
    rank_in_window = [0] * n
    for w, (g, s) in enumerate(zip(groups, scores)):
        for r, j in enumerate(sorted(range(len(g)), key=lambda j: -s[j])):
            window_of[g[j]], first[g[j]], rank_in_window[g[j]] = w, s[j], r
    if len(groups) == 1:
        order = sorted(range(n), key=lambda i: rank_in_window[i])
        return PlanResult(order, first, window_of, first)
    by_rank = sorted(range(n), key=lambda i: (rank_in_window[i], -first[i], window_of[i]))
    chosen, used = [], 0
    limit = min(cfg.finalists or n, cfg.window_docs or n)
    for i in by_rank:
        if len(chosen) >= limit or used + token_counts[i] > budget:
            break
        chosen.append(i)
        used += token_counts[i]
    finalists = sorted(chosen)                    # the given order inside the prompt
    [final] = yield [finalists]
    final_score = dict(zip(finalists, final))
    rest = [i for i in by_rank if i not in final_score]
    order = sorted(finalists, key=lambda i: -final_score[i]) + rest
    scores = [final_score.get(i, first[i]) for i in range(n)]
    return PlanResult(order, scores, window_of, first, finalists, len(groups))


def sliding_plan(token_counts: Sequence[int], budget: int, cfg: WindowConfig) -> Plan:
    """The ``sliding`` strategy: RankGPT's back-to-front windows over the given order."""
    n, size, step = len(token_counts), cfg.window_docs or 20, cfg.step
    order = list(range(n))                       # current ranking, best first
    scores, window_of = [0.0] * n, [0] * n
    first: list[float | None] = [None] * n
    end, w = n, 0
    while True:
        start = max(0, end - size)
        window = order[start:end]
        if sum(token_counts[i] for i in window) > budget:
            raise ContextOverflowError(f"a sliding window of {len(window)} documents is over "
                                       f"{budget} tokens; lower window_docs")
        [got] = yield [window]
        for i, s in zip(window, got):
            scores[i] = s
            if first[i] is None:
                first[i], window_of[i] = s, w
        order[start:end] = sorted(window, key=lambda i: -scores[i])
        w += 1
        if start == 0:
            break
        end -= step
    return PlanResult(order, scores, window_of, [f or 0.0 for f in first], [], w)


PLANS = {"rescore": rescore_plan, "sliding": sliding_plan}


def passage_tokens(tokenizer: Any, template: Any, docs: Sequence[Any]) -> list[int]:
    """Tokens each document adds to a scoring prompt, over- rather than under-estimated: a
    3-digit index and one token per passage for merges at the seams."""
    texts = [template.separator + "[999] " + (f"{d.title}\n" if d.title else "") + d.text
             for d in docs]
    return [len(ids) + 1 for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def window_budget(tokenizer: Any, template: Any, queries: Sequence[str], limit: int) -> int:
    """Tokens left for documents once the scaffolding and the longest query are counted."""
    text, _, _ = render(template, max(queries, key=len), [])
    return limit - len(tokenizer(text)["input_ids"]) - SAFETY_TOKENS


def run_plan(plan: Plan, score_groups) -> PlanResult:
    """Drive a plan with ``score_groups(groups) -> [[score per document] per group]``."""
    try:
        groups = next(plan)
        while True:
            groups = plan.send(score_groups(groups))
    except StopIteration as done:
        return done.value


async def run_plan_async(plan: Plan, score_groups) -> PlanResult:
    """:func:`run_plan` with an async ``score_groups``."""
    try:
        groups = next(plan)
        while True:
            groups = plan.send(await score_groups(groups))
    except StopIteration as done:
        return done.value
