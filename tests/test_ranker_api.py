"""QRHeadRanker's public surface on the real SmolLM2: input shapes, result fields, errors.

A few heads in early layers keep every call cheap (the port stops after the last head's layer).
"""

from __future__ import annotations

import json

import pytest

from qrhead_vllm import ContextOverflowError, Document, HeadConfigError, InvalidInputError
from qrhead_vllm.ranker import QRHeadRanker
from tests.shared_backend import SharedBackend

HEADS = [(3, 4), (6, 2), (9, 8)]
QUERY = "Which city is the capital of France?"
TEXTS = [
    "The Golden Gate Bridge spans the strait between San Francisco Bay and the Pacific Ocean.",
    "Paris is the capital and most populous city of France.",
    "Pasta is a staple food of traditional Italian cuisine.",
]
DICTS = [{"id": f"doc-{i}", "title": t, "text": x}
         for i, (t, x) in enumerate(zip(["Bridge", "Paris", "Pasta"], TEXTS))]


@pytest.fixture(scope="module")
def ranker(smollm2_backend):
    return QRHeadRanker("smollm2-135m", heads=HEADS, backend=smollm2_backend)


@pytest.fixture(scope="module")
def from_strings(ranker):
    return ranker.rank(QUERY, TEXTS)


def test_string_docs_get_positional_ids_and_full_results(from_strings):
    assert sorted(r.index for r in from_strings) == [0, 1, 2]
    assert [r.rank for r in from_strings] == [1, 2, 3]
    assert all(r.doc_id == r.index and r.document.text == TEXTS[r.index] for r in from_strings)
    scores = [r.score for r in from_strings]
    assert scores == sorted(scores, reverse=True)
    assert from_strings.query == QUERY


def test_documents_without_title_score_like_strings(ranker, from_strings):
    # Same prompt, so the same scores: the input form must not change what is scored.
    docs = [Document(t, doc_id=f"x{i}") for i, t in enumerate(TEXTS)]
    result = ranker.rank(QUERY, docs)
    assert {r.index: r.score for r in result} == {r.index: r.score for r in from_strings}
    assert {r.doc_id for r in result} == {"x0", "x1", "x2"}


def test_dict_docs_keep_id_and_title(ranker):
    result = ranker.rank(QUERY, DICTS)
    paris = result.get_result_by_docid("doc-1")
    assert paris.index == 1 and paris.document.title == "Paris"
    assert paris.document.text == TEXTS[1]
    with pytest.raises(KeyError):
        result.get_result_by_docid("missing")


def test_doc_ids_argument_and_top_k(ranker):
    result = ranker.rank(QUERY, TEXTS, doc_ids=["a", "b", "c"])
    assert {r.doc_id for r in result} == {"a", "b", "c"}
    top = result.top_k(2)
    assert top == result.results[:2] and [r.rank for r in top] == [1, 2]
    assert result.get_result_by_docid("b").index == 1


def test_rank_many_equals_rank_per_query(ranker):
    queries = [QUERY, "What food is typical of Italy?"]
    many = ranker.rank_many([(q, DICTS) for q in queries])
    for q, got in zip(queries, many):
        one = ranker.rank(q, DICTS)
        assert [(r.doc_id, r.score) for r in got] == [(r.doc_id, r.score) for r in one]


@pytest.mark.parametrize("query, docs, doc_ids", [
    (QUERY, [], None),                              # no documents
    ("", TEXTS, None),                              # empty query
    ("  \n\t", TEXTS, None),                        # whitespace query
    (None, TEXTS, None),                            # non-string query
    (42, TEXTS, None),
    (QUERY, ["fine", 42], None),                    # non-string document
    (QUERY, ["fine", None], None),
    (QUERY, [{"title": "no text"}], None),          # dict without text
    (QUERY, [{"text": 3.5}], None),                 # dict with non-string text
    (QUERY, TEXTS, ["only", "two"]),                # mismatched doc_ids
], ids=["empty-docs", "empty-query", "blank-query", "none-query", "int-query", "int-doc",
        "none-doc", "dict-without-text", "dict-non-string-text", "mismatched-ids"])
def test_bad_input_raises_our_error(ranker, query, docs, doc_ids):
    with pytest.raises(InvalidInputError):
        ranker.rank(query, docs, doc_ids)


def test_context_overflow_is_our_error_not_index_error(ranker, smollm2_backend):
    limit = smollm2_backend.max_model_len
    long_doc = " ".join(TEXTS * (limit // 20))      # each copy is well over `limit` tokens
    assert ranker.max_words is None
    with pytest.raises(ContextOverflowError, match=str(limit)):
        ranker.rank(QUERY, [long_doc, long_doc])


def test_unknown_backend_is_our_error():
    with pytest.raises(InvalidInputError, match="backend"):
        QRHeadRanker("smollm2-135m", heads="all", backend="onnx")


def test_head_outside_the_model_is_our_error(smollm2_backend):
    with pytest.raises(HeadConfigError):
        QRHeadRanker("smollm2-135m", heads=[(99, 0)], backend=smollm2_backend)


def test_score_only_cut_is_the_deepest_selected_layer():
    from qrhead_vllm.ranker import score_only_cut
    assert score_only_cut("smollm2-135m", None) == 23           # the shipped heads: layers 7-23
    assert score_only_cut("smollm2-135m", [(0, 1), (12, 4), (3, 0)]) == 12
    assert score_only_cut("smollm2-135m", "all") == 29          # every head: every layer
    assert score_only_cut("smollm2-135m", None, last_layer=27) == 27


def test_score_only_is_for_the_engines_that_cut(smollm2_backend):
    # Refused before any engine or model is loaded: the port already stops early.
    for backend in ("transformers", smollm2_backend):
        with pytest.raises(InvalidInputError, match="score-only engine"):
            QRHeadRanker("smollm2-135m", backend=backend, score_only=True)


# --- `qrhead rerank` (a thin layer over the API; it reuses the session's SmolLM2) ----------

@pytest.fixture
def rerank(smollm2_backend, monkeypatch, capsys):
    """Run ``qrhead rerank ARGS`` in-process → (exit code, stdout, stderr)."""
    from qrhead_vllm import cli, ranker

    monkeypatch.setattr(ranker, "make_backend", lambda *a, **k: SharedBackend(smollm2_backend))

    def run(*args):
        code = cli.main(["rerank", *args])
        out = capsys.readouterr()
        return code, out.out, out.err
    return run


def test_cli_ranks_the_shipped_example_as_a_table(rerank, hotpotqa_split):
    example = hotpotqa_split[1][0]
    code, out, err = rerank("--heads", "all", "--max-words", "15", "--top-k", "3")
    assert code == 0, err
    assert example.query in out
    rows = [line.split() for line in out.splitlines() if line[:4].strip().isdigit()]
    assert [r[0] for r in rows] == ["1", "2", "3"]
    assert {r[2] for r in rows} <= {d.doc_id for d in example.documents}
    assert all((r[3] == "*gold*") == (r[2] in example.gold_ids) for r in rows)
    summary = [line for line in out.splitlines() if line.startswith("supporting paragraph")]
    assert len(summary) == 1 and summary[0].endswith(f"of {len(example.documents)}")


def test_cli_marks_the_labelled_documents_and_says_where_they_landed(rerank, tmp_path):
    path = tmp_path / "docs.jsonl"
    labelled = [d | {"is_supporting": d["id"] == "doc-1"} for d in DICTS]
    path.write_text("\n".join(json.dumps(d) for d in labelled) + "\n")
    code, out, err = rerank("--heads", "all", "--query", QUERY, "--docs", str(path))
    assert code == 0, err
    rows = {line.split()[2]: line.split() for line in out.splitlines() if line[:4].strip().isdigit()}
    assert rows["doc-1"][3] == "*gold*" and "*gold*" not in rows["doc-0"] + rows["doc-2"]
    rank = rows["doc-1"][0]
    assert f"supporting paragraph (labelled, marked *gold*) at rank {rank} of 3" in out
    code, out, err = rerank("--heads", "all", "--query", QUERY, "--docs", str(path), "--json")
    data = json.loads(out)
    assert data["gold_ranks"] == [int(rank)]
    assert [r["id"] for r in data["results"] if r["gold"]] == ["doc-1"]


def test_cli_without_labels_shows_no_gold_column(rerank, tmp_path):
    path = tmp_path / "docs.json"
    path.write_text(json.dumps(DICTS))
    code, out, err = rerank("--heads", "all", "--query", QUERY, "--docs", str(path))
    assert code == 0, err
    assert "gold" not in out and "supporting" not in out
    code, out, err = rerank("--heads", "all", "--query", QUERY, "--docs", str(path), "--json")
    data = json.loads(out)
    assert "gold_ranks" not in data and all("gold" not in r for r in data["results"])


def test_cli_json_output_for_a_jsonl_file(rerank, tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps(d) for d in DICTS) + "\n")
    code, out, err = rerank("--heads", "all", "--query", QUERY, "--docs", str(path), "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["query"] == QUERY
    assert sorted(r["id"] for r in data["results"]) == ["doc-0", "doc-1", "doc-2"]
    assert [r["rank"] for r in data["results"]] == [1, 2, 3]


def test_cli_method_icr_is_every_head_and_refuses_a_head_set(rerank, tmp_path):
    path = tmp_path / "docs.json"
    path.write_text(json.dumps(DICTS))
    args = ("--query", QUERY, "--docs", str(path), "--json")
    code, out, err = rerank("--method", "icr", *args)
    assert code == 0, err
    icr = json.loads(out)
    _, out, _ = rerank("--heads", "all", *args)
    assert icr["method"] == "icr" and icr["results"] == json.loads(out)["results"]
    code, _, err = rerank("--method", "icr", "--heads", "smollm2-135m-hotpotqa", *args)
    assert code == 2 and "scores with every head; leave heads unset" in err


def test_cli_accepts_a_json_list_of_strings(rerank, tmp_path):
    path = tmp_path / "docs.json"
    path.write_text(json.dumps(TEXTS))
    code, out, err = rerank("--heads", "all", "--query", QUERY, "--docs", str(path), "--json")
    assert code == 0, err
    assert sorted(r["index"] for r in json.loads(out)["results"]) == [0, 1, 2]


@pytest.mark.parametrize("flags, reverse", [((), True), (("--reverse-order",), True),
                                              (("--no-reverse-order",), False)])
def test_cli_prompt_order_is_the_api_s(rerank, smollm2_backend, tmp_path, flags, reverse):
    path = tmp_path / "docs.json"
    path.write_text(json.dumps(TEXTS))
    code, out, err = rerank("--heads", "all", "--query", QUERY, "--docs", str(path), "--json",
                            *flags)
    assert code == 0, err
    got = {r["index"]: r["score"] for r in json.loads(out)["results"]}
    api = {reverse_order: {r.index: r.score for r in QRHeadRanker(
        "smollm2-135m", heads="all", backend=smollm2_backend,
        reverse_order=reverse_order).rank(QUERY, TEXTS)} for reverse_order in (True, False)}
    assert got == pytest.approx(api[reverse], abs=1e-6)
    assert got != pytest.approx(api[not reverse], abs=1e-6)    # the order does change scores


@pytest.mark.parametrize("content, extra, message", [
    (None, [], "cannot read"),                                 # missing file
    ("{not json\n", [], "not valid JSON"),
    ("[]", [], "no documents"),
    ('["a", 5]', [], "document 1"),                            # the ranker's own validation
    ('["a"]', ["--query", " "], "query"),
    ('["a"]', ["--heads", "no-such-head-config"], "no head config"),
], ids=["missing", "bad-json", "empty", "non-string-doc", "blank-query", "unknown-heads"])
def test_cli_user_errors_exit_2_with_one_line(rerank, tmp_path, content, extra, message):
    path = tmp_path / "docs.json"
    if content is not None:
        path.write_text(content)
    args = ["--query", QUERY, "--docs", str(path), "--heads", "all", *extra]
    code, out, err = rerank(*args)
    assert code == 2 and out == ""
    assert err.startswith("qrhead rerank: error:") and message in err
    assert "Traceback" not in err


def test_cli_docs_without_query_is_a_user_error(rerank, tmp_path):
    (tmp_path / "d.json").write_text(json.dumps(TEXTS))
    code, _, err = rerank("--docs", str(tmp_path / "d.json"))
    assert code == 2 and "--query" in err


def test_cli_missing_default_heads_suggests_heads_all(rerank, tmp_path, monkeypatch):
    monkeypatch.setenv("QRHEAD_CONFIG_DIR", str(tmp_path))  # no shipped configs at all
    code, _, err = rerank("--max-words", "5")
    assert code == 2 and "--heads all" in err
