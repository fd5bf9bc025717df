"""Citations from decode-time attention: which documents each sentence of an answer drew on.

Input, for one generated answer:

* ``mass``: ``[G, H, N]`` (or ``[G, N]``, heads already summed) fp32 — for generated token
  ``g``, the selected heads' attention mass on each of the ``N`` document spans (the engine's
  decode capture, or the port's teacher-forced twin). Row ``g`` belongs to the token whose
  char span is ``offsets[g]``; tokens past ``G`` carry no mass.
* ``offsets``: ``(start, end)`` char offsets of the generated tokens in ``text``; an empty span
  (a special token such as the end of turn) is no part of any sentence.
* ``text``: the generated answer; ``prefill_scores``: the ``[N]`` document scores of the same
  request's prefill (what ``/v1/rerank`` returns), or None.

The rule (:class:`CitationRule`, defaults in brackets):

1. **Sentences.** ``text`` is cut right after each run of ``.``, ``!`` or ``?`` (closing quotes
   or brackets included) that whitespace follows, and after each newline. A sentence is the
   text between two cuts with its surrounding whitespace stripped; whitespace-only pieces are
   no sentence. A token belongs to the piece holding its first character.
2. **Decode shares.** Per sentence, the mass summed over its tokens and heads, ``m[N]``;
   ``decode = m / Σm``.
3. **Short sentences** ("yes", a name) get little decode signal: with ``prefill_scores`` their
   shares blend towards the prefill's, ``share = w·decode + (1 − w)·prefill`` with
   ``w = min(1, tokens / short_tokens)`` [8]; ``prefill`` is the prefill scores clipped at 0
   and normalised (uniform when none is positive). ``short_tokens = 0``, or no prefill scores,
   gives the decode shares alone.
4. **Cited documents**: by share, best first, while the shares taken sum to less than
   ``mass`` [0.5] (the smallest top set holding half the mass), at most ``max_docs`` [3], and
   only documents above the uniform share ``1/N`` (the best one always qualifies). A sentence
   with no mass at all cites nothing.

Streaming: a sentence is closed once text follows its cut (:func:`closed_sentences`); its
citation is then final, since later tokens belong to later sentences.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Any, Sequence

import torch

# A cut follows sentence-final punctuation (with any closing quotes/brackets) before whitespace,
# or a newline.
CUT = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*(?=\s)|\n")


@dataclass(frozen=True)
class CitationRule:
    """How token mass becomes cited documents (see the module docstring)."""

    mass: float = 0.5           # cite the smallest top set holding this share of the mass
    max_docs: int = 3           # ... but never more documents than this
    short_tokens: int = 8       # sentences shorter than this lean on the prefill scores


DEFAULT_RULE = CitationRule()


@dataclass(frozen=True)
class Citation:
    """One answer sentence and the documents it cites (Cohere-style span + sources)."""

    start: int                              # char offsets in the answer: text[start:end]
    end: int
    text: str
    document_indices: tuple[int, ...]       # cited documents, highest share first
    shares: tuple[float, ...]               # their shares of the sentence's mass
    tokens: int                             # generated tokens in the sentence

    def as_dict(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "text": self.text,
                "document_indices": list(self.document_indices),
                "shares": [round(s, 6) for s in self.shares], "tokens": self.tokens}


def pieces(text: str) -> list[tuple[int, int]]:
    """The text cut into consecutive pieces ``[a, b)`` (rule step 1, before stripping)."""
    cuts = [0] + [m.end() for m in CUT.finditer(text)] + [len(text)]
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


def _stripped(text: str, a: int, b: int) -> tuple[int, int]:
    piece = text[a:b]
    lead = len(piece) - len(piece.lstrip())
    return a + lead, a + len(piece.rstrip())


def closed_sentences(text: str) -> int:
    """How many leading pieces of ``text`` (so far, mid-stream) can no longer change: every
    piece but the last, which may still grow."""
    return max(0, len(pieces(text)) - 1)


def prefill_shares(scores: torch.Tensor) -> torch.Tensor:
    """Prefill scores as shares: clipped at 0 and normalised; uniform when none is positive."""
    pos = scores.clamp(min=0).double()
    total = pos.sum()
    return pos / total if total > 0 else torch.full_like(pos, 1.0 / len(pos))


def cited(shares: torch.Tensor, rule: CitationRule) -> tuple[list[int], list[float]]:
    """Rule step 4: the cited documents and their shares, best first."""
    n = len(shares)
    order = torch.argsort(shares, descending=True, stable=True).tolist()
    docs: list[int] = []
    taken = 0.0
    for i in order:
        share = float(shares[i])
        if len(docs) >= rule.max_docs or taken >= rule.mass or (docs and share <= 1.0 / n):
            break
        docs.append(i)
        taken += share
    return docs, [float(shares[i]) for i in docs]


def cite(mass: torch.Tensor, offsets: Sequence[tuple[int, int]], text: str,
         prefill_scores: torch.Tensor | Sequence[float] | None = None,
         rule: CitationRule = DEFAULT_RULE, sentences: int | None = None) -> list[Citation]:
    """Citations of the answer's sentences (the first ``sentences`` pieces, default all).

    Args:
        mass: ``[G, H, N]`` or ``[G, N]`` per-token document mass (module docstring).
        offsets: char span of each generated token in ``text`` (at least ``G`` of them).
        text: the generated answer.
        prefill_scores: ``[N]`` prefill document scores, for short sentences; None: decode only.
        rule: the citation rule.
        sentences: cite only the first ``sentences`` pieces (streaming: the closed ones).
    """
    per_token = mass.double() if mass.dim() == 2 else mass.double().sum(dim=1)
    g, n = per_token.shape
    cut = pieces(text)[:sentences]
    starts = [a for a, _ in cut]
    sums = torch.zeros(len(cut), n, dtype=torch.float64)
    counts = [0] * len(cut)
    for t, (a, b) in enumerate(offsets[:g]):
        k = bisect.bisect_right(starts, a) - 1
        if b > a and 0 <= k < len(cut) and a < cut[k][1]:
            sums[k] += per_token[t]
            counts[k] += 1
    prior = None if prefill_scores is None else prefill_shares(torch.as_tensor(prefill_scores))
    out = []
    for (a, b), m, count in zip(cut, sums, counts):
        start, end = _stripped(text, a, b)
        if start == end:
            continue
        docs, shares = sentence_sources(m, count, prior, rule)
        out.append(Citation(start, end, text[start:end], tuple(docs), tuple(shares), count))
    return out


def sentence_sources(m: torch.Tensor, count: int, prior: torch.Tensor | None,
                     rule: CitationRule) -> tuple[list[int], list[float]]:
    """Steps 2–4 for one sentence of mass ``m[N]`` over ``count`` tokens."""
    total = float(m.sum())
    decode = m / total if total > 0 else None
    if prior is not None and rule.short_tokens > 0:
        w = min(1.0, count / rule.short_tokens) if decode is not None else 0.0
        shares = prior if decode is None else w * decode + (1 - w) * prior
    elif decode is None:
        return [], []
    else:
        shares = decode
    return cited(shares, rule)


def token_offsets(tokenizer: Any, token_ids: Sequence[int], text: str
                  ) -> list[tuple[int, int]]:
    """Char spans of generated tokens in the answer ``text``: token ``i`` ends where the
    decoding of the first ``i + 1`` ids ends (clipped to ``text``, which a stop string may have
    cut). The tokenizer is duck-typed (``decode(ids, skip_special_tokens=True)``); special
    tokens get empty spans."""
    out, prev = [], 0
    for i in range(len(token_ids)):
        end = min(len(tokenizer.decode(list(token_ids[:i + 1]), skip_special_tokens=True)),
                  len(text))
        end = max(prev, end)
        out.append((prev, end))
        prev = end
    return out
