"""Scoring more passages than fit one prompt: balanced windows, then one re-scoring prompt.

QRHead scores a document by the query's (calibrated) attention mass on it, and attention is a
softmax over the whole prompt, so a score is only exactly comparable with scores from the same
prompt. When the passages do not fit the retriever's window we:

1. pack them, in input order, into the fewest windows that fit, balanced to similar token
   counts (so every window's attention budget is spread over a similar amount of text);
2. score every window with the same head set, the same prompt layout and the same null-query
   calibration (calibration subtracts each window's own "N/A" attention, which removes most of
   the position and length bias); windows run concurrently, vLLM batches them;
3. (answers) take the best candidates by window score and score them again *together in one
   prompt*; the scores we cite come from that prompt, so they are directly comparable.

What stays approximate: step 2's scores across windows. A relevant passage sharing a window with
other relevant passages gets less mass than it would alone, so a window score is a preselection
signal, not a calibrated probability. Step 3 is why the cited top-k are ranked on equal terms.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any, Sequence

from qrhead_vllm.core.prompt import render
from qrhead_vllm.errors import ContextOverflowError
from qrhead_vllm.results import Document, RankedResults, ranked

# Our token estimate sums per-passage tokenisations; merges at the seams can differ by a token
# or two per passage. A window the ranker still finds too long is split in two and retried.
SAFETY_TOKENS = 16


def pack_windows(token_counts: Sequence[int], budget: int) -> list[list[int]]:
    """Contiguous groups of indices, each summing to <= budget, balanced in size.

    Raises:
        ContextOverflowError: one passage alone is over the budget.
    """
    for i, n in enumerate(token_counts):
        if n > budget:
            raise ContextOverflowError(
                f"passage {i} has about {n} tokens but a scoring window holds {budget} after "
                "the query; split it into shorter passages")
    total = sum(token_counts)
    windows = max(1, math.ceil(total / budget))
    while True:
        target = math.ceil(total / windows)
        groups, current, size = [], [], 0
        for i, n in enumerate(token_counts):
            if current and (size + n > budget or size >= target):
                groups.append(current)
                current, size = [], 0
            current.append(i)
            size += n
        groups.append(current)
        if len(groups) <= windows or windows >= len(token_counts):
            return groups
        windows += 1  # greedy balancing overshot: allow one more window


@dataclass(frozen=True)
class WindowedScores:
    """Scores of every passage plus which window scored it."""

    results: RankedResults
    window_of: list[int]
    num_windows: int
    prompt_tokens: int


def passage_tokens(ranker, docs: Sequence[Document]) -> list[int]:
    """Approximate tokens each document adds to a scoring prompt."""
    tok, sep = ranker.backend.tokenizer, ranker.template.separator
    texts = [sep + "[999] " + (f"{d.title}\n" if d.title else "") + d.text for d in docs]
    return [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]


def window_budget(ranker, query: str, limit: int) -> int:
    """Tokens left for documents once the prompt scaffolding and the query are counted."""
    longest = max(query, ranker.null_query, key=len)
    text, _, _ = render(ranker.template, longest, [])
    overhead = len(ranker.backend.tokenizer(text)["input_ids"])
    return limit - overhead - SAFETY_TOKENS


async def score_windowed(ranker, query: str, docs: list[Document], limit: int,
                         per_head: bool = False) -> WindowedScores:
    """Score ``docs`` in as few balanced windows as fit ``limit`` tokens each (see above)."""
    groups = pack_windows(passage_tokens(ranker, docs), window_budget(ranker, query, limit))
    parts = await asyncio.gather(*(_score_group(ranker, query, docs, g, per_head)
                                   for g in groups))
    flat = [p for group_parts in parts for p in group_parts]
    scores, heads, window_of = [0.0] * len(docs), None, [0] * len(docs)
    if per_head:
        heads = [[0.0] * len(docs) for _ in ranker.head_pairs]
    for w, (group, res, _) in enumerate(flat):
        for r in res.results:
            scores[group[r.index]] = r.score
            window_of[group[r.index]] = w
        for h, row in enumerate(res.head_scores or []):
            for j, v in enumerate(row):
                heads[h][group[j]] = v
    return WindowedScores(ranked(query.strip(), docs, scores, heads), window_of, len(flat),
                          sum(tokens for _, _, tokens in flat))


async def _score_group(ranker, query: str, docs: list[Document], group: list[int],
                       per_head: bool) -> list[tuple[list[int], RankedResults, int]]:
    """Score one window; a window our estimate let overflow is halved and retried."""
    subset = [docs[i] for i in group]
    try:
        _, req = ranker.prepare(query, subset)
    except ContextOverflowError:
        if len(group) == 1:
            raise
        half = len(group) // 2
        left, right = await asyncio.gather(_score_group(ranker, query, docs, group[:half], per_head),
                                           _score_group(ranker, query, docs, group[half:], per_head))
        return left + right
    res = await ranker.rank_async(query, subset, per_head=per_head)
    return [(group, res, prompt_tokens(req))]


def prompt_tokens(req: Any) -> int:
    """Tokens the engine prefilled for one MassRequest (real prompt + null twin)."""
    return req.real.num_tokens + (req.null.num_tokens if req.null is not None else 0)
