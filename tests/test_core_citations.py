"""Citations from per-token document mass (qrhead_vllm/core/citations.py): sentence cuts,
token-to-sentence assignment, shares, the cited set and the short-answer blend. Expected values
are worked out by hand in the comments."""

from __future__ import annotations

import pytest
import torch

from qrhead_vllm.core.citations import (CitationRule, cite, cited, closed_sentences, pieces,
                                        prefill_shares)


def tokens_of(text: str, words: list[str]) -> list[tuple[int, int]]:
    """Char spans of ``words`` found left to right in ``text`` (a toy tokenizer)."""
    out, pos = [], 0
    for w in words:
        a = text.index(w, pos)
        out.append((a, a + len(w)))
        pos = a + len(w)
    return out


def test_pieces_cut_after_final_punctuation_before_whitespace_and_at_newlines():
    text = 'It is 3.5 m. "Yes!" he said?\nNew line'
    cuts = [text[a:b] for a, b in pieces(text)]
    # "3.5" has no whitespace after its dot: no cut; the closing quote stays with "Yes!".
    assert cuts == ["It is 3.5 m.", ' "Yes!"', " he said?", "\n", "New line"]


def test_closed_sentences_leaves_the_last_piece_open():
    assert closed_sentences("Paris.") == 0          # no text after the cut yet
    assert closed_sentences("Paris. It") == 1
    assert closed_sentences("") == 0


def test_mass_is_summed_per_sentence_over_tokens_and_heads():
    text = "Paris is big. Rome too."
    offsets = tokens_of(text, ["Paris", " is", " big", ".", " Rome", " too", "."])
    # 7 tokens, 2 heads, 3 documents; sentence 1 = tokens 0-3, sentence 2 = tokens 4-6.
    mass = torch.zeros(7, 2, 3)
    mass[0:4, 0, 0] = 1.0       # sentence 1: doc 0 gets 4 (head 0) ...
    mass[0:4, 1, 2] = 0.25      # ... doc 2 gets 1 (head 1): shares 0.8 / 0 / 0.2
    mass[4:7, :, 1] = 1.0       # sentence 2: all on doc 1
    out = cite(mass, offsets, text, rule=CitationRule(short_tokens=0))
    assert [(c.start, c.end, c.text) for c in out] == [(0, 13, "Paris is big."),
                                                       (14, 23, "Rome too.")]
    # doc 0 alone holds 0.8 >= 0.5 of the mass: cited alone.
    assert out[0].document_indices == (0,) and out[0].shares == pytest.approx((0.8,))
    assert out[1].document_indices == (1,) and out[1].shares == pytest.approx((1.0,))
    assert [c.tokens for c in out] == [4, 3]
    # Heads summed beforehand give the same citations.
    assert cite(mass.sum(dim=1), offsets, text, rule=CitationRule(short_tokens=0)) == out


def test_the_cited_set_is_the_top_half_of_the_mass_above_uniform_at_most_max_docs():
    # shares 0.3, 0.25, 0.2, 0.15, 0.1: 0.3 < 0.5 → take the next; 0.55 >= 0.5 → stop.
    shares = torch.tensor([0.25, 0.1, 0.3, 0.15, 0.2], dtype=torch.float64)
    assert cited(shares, CitationRule()) == ([2, 0], pytest.approx([0.3, 0.25]))
    # max_docs caps it; mass=0.9 would take 0.3+0.25+0.2 but 0.15 < 1/5 is never cited.
    assert cited(shares, CitationRule(max_docs=1))[0] == [2]
    assert cited(shares, CitationRule(mass=0.9, max_docs=5))[0] == [2, 0]
    # uniform shares: the best one (first, stable order) still qualifies, no other does.
    assert cited(torch.full((4,), 0.25, dtype=torch.float64), CitationRule())[0] == [0]


def test_short_sentence_blends_towards_the_prefill_scores():
    text = "Paris."
    offsets = tokens_of(text, ["Paris", "."])
    mass = torch.tensor([[1.0, 0.0], [1.0, 0.0]])   # decode: all on doc 0
    prefill = torch.tensor([-0.5, 2.0])               # clipped: [0, 2] → shares [0, 1]
    rule = CitationRule(short_tokens=8)               # 2 tokens: w = 2/8 = 0.25
    [c] = cite(mass, offsets, text, prefill, rule)
    # blended shares: doc0 = 0.25·1 + 0.75·0 = 0.25, doc1 = 0.25·0 + 0.75·1 = 0.75
    assert c.document_indices == (1,) and c.shares == pytest.approx((0.75,))
    # decode only: doc 0
    [c0] = cite(mass, offsets, text, None, rule)
    assert c0.document_indices == (0,)
    [c1] = cite(mass, offsets, text, prefill, CitationRule(short_tokens=0))
    assert c1.document_indices == (0,)
    # a long sentence (w = 1) ignores the prefill
    [c2] = cite(mass, offsets, text, prefill, CitationRule(short_tokens=2))
    assert c2.document_indices == (0,)


def test_prefill_shares_fall_back_to_uniform():
    assert prefill_shares(torch.tensor([-1.0, 0.0])).tolist() == [0.5, 0.5]
    assert prefill_shares(torch.tensor([1.0, 3.0])).tolist() == [0.25, 0.75]


def test_tokens_without_mass_or_span_count_for_nothing():
    text = "Yes. No."
    # the end-of-turn token has an empty span; only 3 rows for 4 spanned tokens: "." of "No."
    # has no row (the last token's query is never fed).
    offsets = tokens_of(text, ["Yes", ".", " No", "."]) + [(8, 8)]
    mass = torch.tensor([[0.0, 1.0], [0.0, 1.0], [3.0, 1.0]])
    out = cite(mass, offsets, text, rule=CitationRule(short_tokens=0))
    assert [c.tokens for c in out] == [2, 1]
    assert out[1].document_indices == (0,) and out[1].shares == pytest.approx((0.75,))
    # a sentence with no mass and no prefill cites nothing
    empty = cite(torch.zeros(4, 2), offsets, text)
    assert [c.document_indices for c in empty] == [(), ()]


def test_streaming_cites_only_closed_sentences_with_the_final_values():
    text = "Paris is big. Rome too."
    offsets = tokens_of(text, ["Paris", " is", " big", ".", " Rome", " too", "."])
    mass = torch.rand(7, 2, 3, generator=torch.Generator().manual_seed(0))
    so_far = text[:18]                                # "Paris is big. Rome"
    early = cite(mass[:5], offsets[:5], so_far, sentences=closed_sentences(so_far))
    final = cite(mass, offsets, text)
    assert len(early) == 1 and early[0] == final[0]
    assert final[0].as_dict()["document_indices"] == list(final[0].document_indices)
