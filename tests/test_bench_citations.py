"""The citation bench's pure arithmetic: cited sets against gold, rankings, row means, resuming,
and the head rows each head set reads from the all-heads capture."""

import json

import pytest
import torch

from bench.quality.citation_metrics import RowStats, precision_recall, recall_at, top_k
from bench.quality.citation_report import cited_by_rule, head_index
from bench.quality.citation_run import todo
from bench.quality.citations_baselines import at2_features
from qrhead_vllm.core.citations import CitationRule
from qrhead_vllm.datasets import Example
from qrhead_vllm.results import Document


def test_precision_recall_of_a_cited_set():
    assert precision_recall([0, 3, 5], [3, 7]) == (pytest.approx(1 / 3), 0.5)
    assert precision_recall([3, 7], [7, 3]) == (1.0, 1.0)
    assert precision_recall([3, 3], [3, 7]) == (1.0, 0.5)        # a set: repeats count once


def test_citing_nothing_has_precision_zero_and_empty_gold_has_recall_one():
    assert precision_recall([], [1, 2]) == (0.0, 0.0)
    assert precision_recall([1], []) == (0.0, 1.0)


def test_top_k_is_best_first_and_ties_keep_document_order():
    assert top_k([0.1, 0.9, 0.5, 0.9], 3) == [1, 3, 2]
    assert top_k([1.0, 1.0, 1.0], 2) == [0, 1]


def test_recall_at_2():
    assert recall_at([0.9, 0.1, 0.8, 0.2], [0, 3]) == 0.5
    assert recall_at([0.9, 0.1, 0.8, 0.2], [0, 2]) == 1.0
    assert recall_at([0.9, 0.1, 0.8, 0.2], [0, 1, 2], k=2) == pytest.approx(2 / 3)


def test_row_means_are_macro_percentages_and_skip_missing_rankings():
    row = RowStats()
    row.add([0, 1], [1, 2], [0.9, 0.8, 0.1], passes=1, seconds=2.0)    # P 50, R 50, R@2 50
    row.add([2], [2], None, passes=3, seconds=4.0)                      # P 100, R 100
    m = row.means()
    assert m["precision"] == pytest.approx(75.0) and m["recall"] == pytest.approx(75.0)
    assert m["recall@2"] == pytest.approx(50.0)            # only the question that ranked
    assert m["cited"] == 1.5 and m["passes"] == 2 and m["seconds"] == 3.0 and m["n"] == 2


def test_head_index_is_layer_major():
    assert head_index([(0, 0), (1, 2), (2, 13)], num_heads=14).tolist() == [0, 16, 41]


def test_at2_features_average_the_answer_rows_per_head_and_document():
    mass = torch.zeros(3, 2, 4)            # G=3 rows (the last emits the end of turn), 2 heads
    mass[0, 1, 2] = 3.0
    mass[1, 1, 2] = 1.0
    mass[2, 0, 0] = 100.0                  # the end-of-turn row is no part of the answer
    f = at2_features(mass, answer_tokens=2)
    assert f.shape == (4, 2)               # [N, heads]
    assert f[2, 1] == 2.0 and f.sum() == 2.0


def test_cited_by_rule_unions_the_sentences_citations():
    # Two sentences: the first draws on document 0, the second on document 2.
    text = "Alpha beta. Gamma delta."
    offsets = [(0, 5), (5, 11), (11, 17), (17, 24)]
    mass = torch.tensor([[9.0, 0.5, 0.5], [9.0, 0.5, 0.5], [0.5, 0.5, 9.0], [0.5, 0.5, 9.0]])
    r = {"offsets": offsets, "answer": text}
    assert cited_by_rule(mass, r, CitationRule(short_tokens=0), None) == [0, 2]


def test_todo_skips_questions_already_in_the_jsonl(tmp_path):
    path = tmp_path / "out" / "citations-x.jsonl"
    docs = (Document("t", None, "d0"),)
    items = [(Example(q, "q?", docs), ()) for q in ("a", "b", "c")]
    assert [e.qid for e, _ in todo(path, items, "m1")] == ["a", "b", "c"]
    path.write_text(json.dumps({"qid": "b", "model": "m1"}) + "\n"
                    + json.dumps({"qid": "c", "model": "m2"}) + "\n")
    assert [e.qid for e, _ in todo(path, items, "m1")] == ["a", "c"]     # c: another model's
