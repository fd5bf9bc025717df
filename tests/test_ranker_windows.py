"""Windowed ranking on the real bundled SmolLM2 (transformers reference port): a windowed call
that fits one window equals a plain call, finalists are scored exactly as one prompt of them,
the prompt order option maps scores back to the input, and a 100-passage TREC DL19 query (about
9.6K tokens, more than SmolLM2's 8K context) ranks without a context error."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from qrhead_vllm.core import truncate_words
from qrhead_vllm.datasets import load_shared
from qrhead_vllm.ranker import QRHeadRanker
from qrhead_vllm.windows import WindowConfig

MODEL = "smollm2-135m"
DL19_ONE = Path(__file__).resolve().parent / "data" / "dl19-one-query-top100.jsonl"


def short_docs(example, words=30):
    return [replace(d, text=truncate_words(d.text, words)) for d in example.documents]


@pytest.fixture(scope="module")
def example(hotpotqa_split):
    return hotpotqa_split[1][0]


def test_one_window_equals_a_plain_call(smollm2_backend, example):
    docs = short_docs(example)
    plain = QRHeadRanker(MODEL, backend=smollm2_backend, window=None).rank(example.query, docs)
    windowed = QRHeadRanker(MODEL, backend=smollm2_backend,
                            window=WindowConfig(always=True)).rank(example.query, docs)
    assert windowed.windows is not None and windowed.windows.num_windows == 1
    assert [r.doc_id for r in windowed] == [r.doc_id for r in plain]
    assert [r.score for r in windowed] == [r.score for r in plain]      # identical, not close


def test_several_windows_then_finalists_in_one_prompt(smollm2_backend, example):
    docs = short_docs(example)
    cfg = WindowConfig(window_tokens=450, finalists=4)
    ranker = QRHeadRanker(MODEL, backend=smollm2_backend, window=cfg)
    res = ranker.rank(example.query, docs)
    info = res.windows
    assert info.num_windows >= 2 and len(info.rescored) == 4
    assert sorted(r.index for r in res) == list(range(len(docs)))
    # The four finalists lead, scored exactly as a plain call over them (given order) scores.
    finalists = [docs[i] for i in info.rescored]
    alone = QRHeadRanker(MODEL, backend=smollm2_backend, window=None).rank(example.query,
                                                                         finalists)
    assert [r.index for r in res.results[:4]] == [info.rescored[r.index] for r in alone]
    assert [r.score for r in res.results[:4]] == pytest.approx([r.score for r in alone],
                                                               abs=1e-6)
    # Every other document keeps its window score.
    for r in res.results[4:]:
        assert r.score == info.window_scores[r.index]


def test_sliding_windows_rank_everything(smollm2_backend, example):
    docs = short_docs(example, 20)
    cfg = WindowConfig("sliding", window_docs=4, step=2, always=True)
    res = QRHeadRanker(MODEL, backend=smollm2_backend, window=cfg).rank(example.query, docs)
    assert res.windows.num_windows == 4                     # 6..9, 4..7, 2..5, 0..3
    assert sorted(r.index for r in res) == list(range(len(docs)))


def test_reverse_order_scores_follow_the_input(smollm2_backend, example):
    docs = short_docs(example)
    rev = QRHeadRanker(MODEL, backend=smollm2_backend, reverse_order=True).rank(example.query,
                                                                               docs)
    manual = QRHeadRanker(MODEL, backend=smollm2_backend, reverse_order=False).rank(
        example.query, docs[::-1])
    by_id = {r.doc_id: r.score for r in manual}
    assert {r.doc_id: r.score for r in rev} == pytest.approx(by_id, abs=1e-6)


@pytest.mark.slow
def test_a_100_passage_dl19_query_ranks_in_windows(smollm2_backend):
    [example] = load_shared(DL19_ONE)
    ranker = QRHeadRanker(MODEL, backend=smollm2_backend)
    res = ranker.rank(example.query, list(example.documents))     # no ContextOverflowError
    assert len(res) == 100 and res.windows is not None and res.windows.num_windows >= 2
    assert res.windows.prompt_tokens > smollm2_backend.max_model_len
    assert res.prompt_tokens == res.windows.prompt_tokens
    assert sorted(r.index for r in res) == list(range(100))
