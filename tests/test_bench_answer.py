"""bench/quality/answer.py's scoring: the HotpotQA/SQuAD normalisation, EM and token F1 over the
answer and its aliases, answer clean-up and recall (pure functions, no model)."""

from __future__ import annotations

import pytest

from bench.quality import answer


@pytest.mark.parametrize("text, normal", [
    ("The Anglican Communion.", "anglican communion"),
    ("  G. Stanley   Hall ", "g stanley hall"),
    ("an apple, a pear & the plum!", "apple pear plum"),
    ("Theatre", "theatre"),                       # an article only as a whole word
])
def test_normalize_answer_as_the_squad_script(text, normal):
    assert answer.normalize_answer(text) == normal


def test_em_and_f1_take_the_best_alias():
    assert answer.answer_scores("Stanley Hall", ["G. Stanley Hall", "Stanley Hall"]) == (1.0, 1.0)
    em, f1 = answer.answer_scores("Hall", ["G. Stanley Hall"])
    assert em == 0.0 and f1 == pytest.approx(2 * 1.0 * (1 / 3) / (1 + 1 / 3))
    assert answer.answer_scores("Paris", ["London"]) == (0.0, 0.0)


def test_yes_no_must_match_exactly():
    assert answer.f1_one("yes they are", "yes") == 0.0
    assert answer.f1_one("no", "no") == 1.0


def test_clean_prediction_keeps_the_first_line_without_prefix():
    assert answer.clean_prediction("\n Answer: Adriana Trigiani.\nBecause ...") == \
        "Adriana Trigiani"
    assert answer.clean_prediction("35") == "35"


def test_recall_of_the_selected_paragraphs():
    assert answer.recall(["1", "2", "3"], frozenset({"2", "9"})) == 0.5
    assert answer.recall([], frozenset({"2"})) == 0.0
