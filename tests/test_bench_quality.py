"""Smoke tests of bench/quality/quality.py on the vendored real HotpotQA records (tests/data): metrics and
baselines on 5 evaluation queries, the LLM path (shared prefill) on 2, and the BEIR-directory reproduction
path on a tiny BEIR-style directory converted from the same records (real gold labels only)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bench.quality import baselines, beir, quality
from bench.quality.llm import HeadSet, llm_runs, random_head_sets
from bench.quality.metrics import METRICS, evaluate_runs, positive_qrels
from qrhead_vllm.core import truncate_words
from qrhead_vllm.engines import make_backend
from qrhead_vllm.ranker import QRHeadRanker

MODEL = "smollm2-135m"


@pytest.fixture(scope="module")
def evaluation(hotpotqa_split):
    detect, evaluate = hotpotqa_split
    assert not {e.qid for e in detect} & {e.qid for e in evaluate}
    return evaluate


@pytest.fixture(scope="module")
def engine():
    be = make_backend("transformers", MODEL, "float32")
    yield be
    be.close()


def qrels_of(examples):
    return {e.qid: {g: 1 for g in e.gold_ids} for e in examples}


def test_metrics_and_baselines_on_five(evaluation):
    ex = evaluation[:5]
    qrels = qrels_of(ex)
    gold_first = {e.qid: sorted(e.documents, key=lambda d: d.doc_id not in e.gold_ids)
                  for e in ex}
    perfect = evaluate_runs(qrels, {q: [d.doc_id for d in ds] for q, ds in gold_first.items()})
    assert perfect == {m: 1.0 for m in METRICS}        # both gold on top: every metric is 1
    for runs in (baselines.original_order(ex), baselines.bm25_rerank(ex),
                 baselines.dense_rerank(ex)):
        for e in ex:                                    # a permutation of the candidates
            assert sorted(runs[e.qid]) == sorted(d.doc_id for d in e.documents)
        scores = evaluate_runs(qrels, runs)
        assert set(scores) == set(METRICS) and all(0 <= v <= 1 for v in scores.values())
    assert evaluate_runs(qrels, baselines.bm25_rerank(ex))["recall@5"] > 0


def test_shuffle_is_seeded_per_query_and_keeps_the_candidates(evaluation):
    e = evaluation[0]
    a, b, c = quality.shuffled(e, 0), quality.shuffled(e, 0), quality.shuffled(e, 1)
    ids = [d.doc_id for d in e.documents]
    assert [d.doc_id for d in a.documents] == [d.doc_id for d in b.documents]
    assert sorted(d.doc_id for d in a.documents) == sorted(ids)
    assert [d.doc_id for d in a.documents] != ids and a.documents != c.documents
    assert a.gold_ids == e.gold_ids


def test_zero_relevance_dropped():
    assert positive_qrels({"a": {"x": 0, "y": 2}, "b": {"z": 0}}) == {"a": {"y": 2}}


def short(e, words=40):
    """The example with each paragraph cut to its first words: same logic, a quarter the prompt."""
    return replace(e, documents=tuple(replace(d, text=truncate_words(d.text, words))
                                      for d in e.documents))


def test_llm_path_on_two_shares_prefill_exactly(evaluation, engine):
    ex = [short(e) for e in evaluation[:2]]
    draw = random_head_sets(engine.facts, 16, 1)[0]
    notes = []
    results = llm_runs(MODEL, engine, [HeadSet("all heads (ICR)", "all"), draw,
                                       HeadSet("detected", None)], ex, notes)
    labels = [s.label for s, _, _ in results]
    assert "all heads (ICR)" in labels and draw.label in labels
    assert len(results) == 3 or "detected" in notes[0]    # detected config may not exist yet
    for _, run, _ in results:
        assert set(run) == {e.qid for e in ex}
    # The shared prefill (union = all heads, for ICR) ranks the draw as a direct run does.
    draw_run = next(run for s, run, _ in results if s.draw is not None)
    direct = QRHeadRanker(MODEL, heads=draw.heads, backend=engine)
    for e in ex:
        assert draw_run[e.qid] == [r.doc_id for r in direct.rank(e.query, list(e.documents))]


def write_beir_dir(root: Path, examples) -> dict[str, list[str]]:
    """BEIR files from HotpotQA records; candidates = a real BM25 (bm25s) order of each query's
    paragraphs; qrels = the records' gold ids (1) and their other paragraphs (0)."""
    (root / "qrels").mkdir(parents=True)
    uid = lambda e, d: f"{e.qid}-{d}"                   # corpus ids must be unique
    with open(root / "corpus.jsonl", "w") as f:
        for e in examples:
            for d in e.documents:
                rec = {"_id": uid(e, d.doc_id), "title": d.title, "text": d.text}
                f.write(json.dumps(rec) + "\n")
    with open(root / "queries.jsonl", "w") as f:
        for e in examples:
            f.write(json.dumps({"_id": e.qid, "text": e.query}) + "\n")
    lines = ["query-id\tcorpus-id\tscore"] + [
        f"{e.qid}\t{uid(e, d.doc_id)}\t{int(d.doc_id in e.gold_ids)}"
        for e in examples for d in e.documents]
    (root / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    bm25 = baselines.bm25_rerank(examples)
    cands = {e.qid: [uid(e, d) for d in bm25[e.qid]] for e in examples}
    (root / "run.bm25.txt").write_text("".join(
        f"{q} Q0 {d} {r} {100 - r} bm25s\n" for q, ids in cands.items()
        for r, d in enumerate(ids, start=1)))
    return cands


def test_beir_dir_reproduction(tmp_path, evaluation):
    ex = evaluation[:3]
    cands = write_beir_dir(tmp_path / "tiny", ex)
    (tmp_path / "cands.json").write_text(json.dumps(cands))
    got, qrels = beir.load_beir(tmp_path / "tiny", num_queries=2, seed=42, max_words=40)
    picked = [ex[i].qid for i in np.random.RandomState(42).choice(3, 2, replace=False)]
    assert [e.qid for e in got] == picked
    assert all(len(d.text.split(" ")) <= 40 for e in got for d in e.documents)
    assert [list(d.doc_id for d in e.documents) for e in got] == [cands[q] for q in picked]
    same, _ = beir.load_beir(tmp_path / "tiny", str(tmp_path / "cands.json"), num_queries=2,
                             seed=42, max_words=40)
    assert same == got
    out = tmp_path / "out"
    rc = quality.main(["--beir-dir", str(tmp_path / "tiny"), "--model", MODEL,
                       "--heads", "10-1,12-3,15-0", "--max-words", "40", "--reverse-order",
                       "--num-queries", "2", "--seed", "42", "--out", str(out)])
    assert rc == 0
    text = (out / "quality-beir-tiny.md").read_text()
    assert "| QRHead (10-1,12-3,15-0) |" in text and "first-stage order (BM25)" in text
    bm25 = evaluate_runs(qrels, {q: cands[q] for q in picked})
    assert f"| first-stage order (BM25) | {100 * bm25['ndcg@10']:.1f} |" in text
    assert (out / "quality-beir-tiny.png").stat().st_size > 0


DL19_ONE = Path(__file__).resolve().parent / "data" / "dl19-one-query-top100.jsonl"
GPU_COMMAND = ["--dataset", "dl19", "--data", "dl20_bm25_top100.jsonl", "--model",
               "meta-llama/Llama-3.1-8B-Instruct", "--heads", "llama-3.1-8b-instruct-nq",
               "--backend", "vllm", "--dtype", "bfloat16", "--max-model-len", "32768",
               "--reverse-order", "--methods", "qrhead,icr,original,fusion", "--out", "results"]


def test_gpu_reproduction_command_parses():
    """The GPU command of docs/results/quality-dl19-top20.md is accepted as written."""
    args = quality.parse_args(GPU_COMMAND)
    assert args.models == ["meta-llama/Llama-3.1-8B-Instruct"] and args.backend == "vllm"
    assert args.metrics == ("ndcg@10", "mrr@10-l2", "recall@20-l2")
    assert args.max_model_len == 32768 and args.reverse_order


def test_trec_dl_protocol_on_a_vendored_query(tmp_path):
    """The DL19 plumbing (the GPU command with the bundled model): --data, graded qrels, the
    fusion row; 10 candidates cut to 20 words keep it small."""
    out = tmp_path / "out"
    rc = quality.main(["--dataset", "dl19", "--data", str(DL19_ONE), "--model", MODEL,
                       "--top-k", "10", "--max-words", "20", "--reverse-order",
                       "--methods", "qrhead,original,fusion", "--out", str(out)])
    assert rc == 0
    text = (out / "quality-dl19.md").read_text()
    assert "| QRHead (smollm2-135m-hotpotqa, 16 heads) |" in text
    assert "RRF fusion: QRHead" in text and "BM25 first stage (given order)" in text
    assert "MRR@10 (rel>=2)" in text and "dl19-one-query-top100.jsonl" in text
