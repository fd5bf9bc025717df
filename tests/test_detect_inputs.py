"""Detection inputs, recipes, checkpoints and CLI flags: fast, no model, no Ray."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from qrhead_vllm.commands import detect as detect_cmd
from qrhead_vllm.datasets import DataError, Example, load_examples
from qrhead_vllm.detect.checkpoint import Checkpoint
from qrhead_vllm.detect.config import DetectConfig
from qrhead_vllm.detect.job import select_examples
from qrhead_vllm.detect.recipes import gold_mass, rank_heads, reduce_scores, top_overlap
from qrhead_vllm.results import Document


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


HOTPOT = {"id": "q1", "question": "who?", "gold_ids": ["d1"],
          "documents": [{"id": "d0", "title": "A", "text": "a"},
                        {"id": "d1", "title": "B", "text": "b"}]}


def test_formats_load_to_the_same_examples(tmp_path):
    hot = write_jsonl(tmp_path / "h.jsonl", [HOTPOT])
    qr = tmp_path / "q.json"
    qr.write_text(json.dumps([{"idx": "q1", "question": "who?", "paragraphs": [
        {"idx": "d0", "title": "A", "paragraph_text": "a", "is_supporting": False},
        {"idx": "d1", "title": "B", "paragraph_text": "b", "is_supporting": True}]}]))
    plain = write_jsonl(tmp_path / "p.jsonl", [{"id": "q1", "query": "who?", "gold": ["d1"],
        "documents": [{"id": "d0", "title": "A", "text": "a"},
                      {"id": "d1", "title": "B", "text": "b"}]}])
    loaded = [load_examples(p)[0] for p in (hot, qr, plain)]
    assert loaded[0] == loaded[1] == loaded[2]
    assert loaded[0][0].gold_ids == {"d1"}


def test_plain_string_documents_get_positional_ids(tmp_path):
    p = write_jsonl(tmp_path / "p.jsonl", [{"query": "q", "documents": ["x", "y"], "gold": [1]}])
    [ex], hashes = load_examples(p)
    assert ex.qid == "1" and [d.doc_id for d in ex.documents] == ["0", "1"]
    assert ex.gold_ids == {"1"} and len(hashes[str(p)]) == 64


def test_beir_directory_with_tsv_and_trec_candidates(tmp_path):
    write_jsonl(tmp_path / "corpus.jsonl", [{"_id": f"c{i}", "title": "", "text": f"t{i}"}
                                            for i in range(4)])
    write_jsonl(tmp_path / "queries.jsonl", [{"_id": "q1", "text": "query one"}])
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq1\tc2\t1\nq1\tc3\t0\nq1\tc9\t2\n")
    (tmp_path / "candidates.tsv").write_text("q1\tc2\nq1\tc0\nq1\tc3\n")
    [ex], hashes = load_examples(tmp_path)
    assert [d.doc_id for d in ex.documents] == ["c2", "c0", "c3"]
    assert ex.gold_ids == {"c2", "c9"}          # zero-relevance dropped; c9 is outside the list
    assert ex.documents[0].title is None and len(hashes) == 4
    trec = tmp_path / "run.trec"
    trec.write_text("q1 Q0 c1 2 5.0 bm25\nq1 Q0 c3 1 9.0 bm25\n")
    [ex], _ = load_examples(tmp_path, candidates=str(trec))
    assert [d.doc_id for d in ex.documents] == ["c3", "c1"]


@pytest.mark.parametrize("record, needle", [
    ({**HOTPOT, "question": None}, ":2: missing field 'question'"),
    ({**HOTPOT, "question": 3}, ":2: field 'question' must be a string"),
    ({**HOTPOT, "gold_ids": ["d7"]}, ":2: field 'gold_ids' names ['d7']"),
    ({**HOTPOT, "documents": [{"id": "d0", "text": "a"}, {"id": "d0", "text": "b"}],
      "gold_ids": []}, ":2: document id 'd0' appears twice"),
    ({**HOTPOT, "documents": [{"id": "d0", "title": "A"}]}, "documents[0]: missing field 'text'"),
])
def test_malformed_records_name_line_and_field(tmp_path, record, needle):
    p = write_jsonl(tmp_path / "h.jsonl", [HOTPOT, record])
    with pytest.raises(DataError) as e:
        load_examples(p, "hotpotqa")
    assert f"{p}{needle}" in str(e.value) or needle in str(e.value)
    assert str(p) in str(e.value)


def test_invalid_json_and_missing_gold_are_errors(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps(HOTPOT) + "\n{not json\n")
    with pytest.raises(DataError, match=r"bad.jsonl:2: invalid JSON"):
        load_examples(p)
    q = tmp_path / "q.json"
    q.write_text(json.dumps([{"idx": 1, "question": "x", "paragraphs": [
        {"idx": 0, "paragraph_text": "a"}]}]))
    with pytest.raises(DataError, match=r"record 1: no gold documents.*gt_docs"):
        load_examples(q)


def test_beir_errors_name_the_line(tmp_path):
    write_jsonl(tmp_path / "corpus.jsonl", [{"_id": "c0", "text": "t"}])
    write_jsonl(tmp_path / "queries.jsonl", [{"_id": "q1", "text": "q"}])
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text("q1\tc0\tone\n")
    (tmp_path / "candidates.tsv").write_text("q1\tc0\n")
    with pytest.raises(DataError, match=r"test.tsv:1: column 'score'"):
        load_examples(tmp_path)
    (tmp_path / "qrels" / "test.tsv").write_text("q1\tc0\t1\n")
    (tmp_path / "candidates.tsv").write_text("q1\tc0\nq1\tc5\n")
    with pytest.raises(DataError, match=r"corpus ids \['c5'\]"):
        load_examples(tmp_path)


def test_shuffle_matches_the_reference_seeding(tmp_path):
    docs = [{"id": f"d{i}", "text": f"t{i}"} for i in range(6)]
    p = write_jsonl(tmp_path / "h.jsonl", [{**HOTPOT, "id": f"q{j}", "documents": docs,
                                            "gold_ids": ["d0"]} for j in range(3)])
    cfg = DetectConfig(data=str(p), output=str(tmp_path / "o.yaml"), shuffle_seed=42)
    got = [[d.doc_id for d in ex.documents] for ex in select_examples(cfg)[0]]
    random.seed(42)                      # the reference: seed once, shuffle in the loop
    want = []
    for _ in range(3):
        ids = [d["id"] for d in docs]
        random.shuffle(ids)
        want.append(ids)
    assert got == want


def test_recipes_reduce_and_rank():
    scores = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.0, 0.0]])
    assert gold_mass(scores, ["a", "b", "c"], frozenset({"a", "c"})) == [4.0, 0.5]
    assert gold_mass(scores, ["a", "b", "c"], frozenset()) == [0.0, 0.0]
    records = [{"mass": [1.0, 3.0, 3.0, 0.0], "ndcg": None},
               {"mass": [3.0, 1.0, 3.0, 0.0], "ndcg": [0.1, 0.9, 0.5, 0.2]}]
    assert reduce_scores(records, "mass").tolist() == [2.0, 2.0, 3.0, 0.0]
    assert reduce_scores(records, "ndcg").tolist() == [0.1, 0.9, 0.5, 0.2]  # no-gold skipped
    # ties keep (layer, head) order; 2 heads per layer
    assert rank_heads(reduce_scores(records, "mass"), 2)[:3] == [(1, 0, 3.0), (0, 0, 2.0),
                                                                 (0, 1, 2.0)]
    assert top_overlap(np.array([3, 2, 1.0]), np.array([1, 2, 3.0]), 2) == 1


def test_checkpoint_drops_a_half_written_record(tmp_path):
    ck = Checkpoint(tmp_path)
    ck.append([{"key": "a", "v": 1}, {"key": "b", "v": 2}])
    with open(ck.records_path, "a") as f:
        f.write('{"key": "c", "v"')                 # killed mid-write
    assert sorted(ck.load()) == ["a", "b"]
    ck.append([{"key": "c", "v": 3}])
    assert ck.load()["c"]["v"] == 3


def test_cli_flags_come_from_the_config(tmp_path):
    import argparse
    parser = argparse.ArgumentParser()
    detect_cmd.add_arguments(parser)
    job = tmp_path / "job.yaml"
    job.write_text(f"data: d.jsonl\noutput: {tmp_path}/o.yaml\ntop_k: 8\n")
    args = parser.parse_args(["--config", str(job), "--recipe", "ndcg", "--no-calibrate",
                              "--max-words", "400", "--engine-kwargs", '{"device": "cpu"}'])
    cfg = detect_cmd.config_from_args(args)
    assert (cfg.top_k, cfg.recipe, cfg.calibrate, cfg.max_words) == (8, "ndcg", False, 400)
    assert cfg.engine_kwargs == {"device": "cpu"}
    # the recipe is reduced from the same checkpoints; scoring settings are not
    assert cfg.scoring_key() == cfg.model_copy(update={"recipe": "mass"}).scoring_key()
    assert cfg.scoring_key() != cfg.model_copy(update={"max_words": 300}).scoring_key()
    assert all(f.description for f in DetectConfig.model_fields.values())


def test_example_is_the_shared_type():
    ex = Example("q", "x", (Document("t", None, "0"),), frozenset({"0"}))
    assert ex.documents[0].doc_id == "0"


def test_model_fingerprint_follows_the_model_files(tmp_path):
    from qrhead_vllm.detect.checkpoint import model_fingerprint

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "tokenizer_config.json").write_text('{"add_bos_token": false}')
    (tmp_path / "model.safetensors").write_bytes(b"x" * 10)
    before = model_fingerprint(str(tmp_path))
    assert model_fingerprint(str(tmp_path)) == before
    (tmp_path / "tokenizer_config.json").write_text('{"add_bos_token": true}')
    assert model_fingerprint(str(tmp_path)) != before
    assert model_fingerprint("org/not-local") == "org/not-local"


def test_contrast_recipe_is_the_gap_to_the_hardest_negative():
    from qrhead_vllm.detect.recipes import example_vectors, hard_negative_gap

    # head 0 puts mass on gold a and on distractor b; head 1 only on gold a
    scores = torch.tensor([[3.0, 2.9, 0.0], [1.0, 0.1, 0.0]])
    gap = hard_negative_gap(scores, ["a", "b", "c"], frozenset({"a"}))
    assert gap == pytest.approx([0.1, 0.9])       # mass would prefer head 0; contrast head 1
    assert hard_negative_gap(scores, ["a", "b", "c"], frozenset()) is None
    assert hard_negative_gap(scores, ["a", "b", "c"], frozenset({"a", "b", "c"})) is None
    rec = example_vectors(scores, ["a", "b", "c"], frozenset({"a"}), 10)
    assert set(rec) == {"mass", "ndcg", "contrast"}
    assert reduce_scores([rec, rec], "contrast").tolist() == pytest.approx([0.1, 0.9])
    with pytest.raises(ValueError, match="before it existed"):
        reduce_scores([{"mass": [1.0], "ndcg": None}], "contrast")
