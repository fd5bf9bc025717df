"""The one document reader (``qrhead_vllm.results.to_document``): every shape it accepts, every
message it refuses with, and that each caller (Python API, /v1/rerank and /v1/answer parsing,
``qrhead rerank --docs``, data files) goes through it. Pure functions: no engine, no Ray."""

from __future__ import annotations

import json

import pytest

from qrhead_vllm.commands.rerank import load_docs
from qrhead_vllm.datasets.example import DataError
from qrhead_vllm.datasets.records import load_record_file
from qrhead_vllm.errors import InvalidInputError
from qrhead_vllm.results import (ANY_FIELDS, QRHEAD_FIELDS, Document, prep_docs,
                                 to_document)
from qrhead_vllm.serve.answer import parse_answer
from qrhead_vllm.serve.errors import APIError
from qrhead_vllm.serve.rerank import parse_rerank


@pytest.mark.parametrize("given, fields, expected", [
    ("plain text", None, Document("plain text", None, 7)),
    (Document("t", "T"), None, Document("t", "T", 7)),
    (Document("t", doc_id="own"), None, Document("t", None, "own")),
    ({"text": "t"}, None, Document("t", None, 7)),
    ({"text": "t", "title": "T", "id": "a"}, None, Document("t", "T", "a")),
    ({"text": "t", "doc_id": 3}, None, Document("t", None, 3)),
    ({"text": "", "title": ""}, None, Document("", None, 7)),       # empty title: no title
    ({"text": "t", "title": None, "id": None}, None, Document("t", None, 7)),
    ({"text": "t", "extra": [1], "is_supporting": True}, None, Document("t", None, 7)),
    ({"paragraph_text": "p", "idx": 4}, QRHEAD_FIELDS, Document("p", None, 4)),
    ({"paragraph_text": "p", "idx": 4}, ANY_FIELDS, Document("p", None, 4)),
    ({"text": "t", "paragraph_text": "p", "id": "a", "idx": 4}, ANY_FIELDS,
     Document("t", None, "a")),                                     # our names win
], ids=["string", "document", "document-own-id", "text-only", "text-title-id", "doc_id",
        "empty-title", "explicit-nulls", "extra-fields", "qrhead-fields", "any-fields-alias",
        "any-fields-both"])
def test_accepted_shapes(given, fields, expected):
    kwargs = {"fields": fields} if fields else {}
    assert to_document(given, "doc 7", 7, **kwargs) == expected


@pytest.mark.parametrize("given, default_id, message", [
    (5, 0, "doc 7 must be a string or an object with a string 'text' field, got int"),
    (["t"], 0, "doc 7 must be a string or an object with a string 'text' field, got list"),
    (None, 0, "got NoneType"),
    ({"title": "T"}, 0, "doc 7: missing field 'text'; a document is a string or an object "
                        "with a string 'text' field"),
    ({"text": 3.5}, 0, "doc 7: field 'text' must be a string, got float"),
    ({"text": "t", "title": 1}, 0, "doc 7: field 'title' must be a string, got int"),
    ({"text": "t", "id": True}, 0, "doc 7: field 'id' must be a string or an integer, got bool"),
    ({"text": "t", "id": {"a": 1}}, 0, "doc 7: field 'id' must be a string or an integer, "
                                       "got dict"),
    (Document(b"bytes"), 0, "doc 7: field 'text' must be a string, got bytes"),
    ("t", None, "doc 7 must be an object with 'id' and string 'text' fields, got str"),
    ({"text": "t"}, None, "doc 7: missing field 'id'"),
], ids=["int", "list", "none", "no-text", "text-float", "title-int", "id-bool", "id-dict",
        "document-bytes", "string-where-id-required", "id-required"])
def test_refusals_name_the_document_and_field(given, default_id, message):
    with pytest.raises(InvalidInputError) as e:
        to_document(given, "doc 7", default_id)
    assert message in str(e.value)


def test_field_names_in_messages_follow_the_format_and_error_type_is_the_callers():
    with pytest.raises(DataError, match=r"p\[0\]: missing field 'paragraph_text'"):
        to_document({"idx": 1, "text": "t"}, "p[0]", None, QRHEAD_FIELDS, DataError)
    with pytest.raises(DataError, match=r"p\[0\]: missing field 'idx'"):
        to_document({"paragraph_text": "t", "id": 1}, "p[0]", None, QRHEAD_FIELDS, DataError)


def test_python_api_positions_doc_ids_and_messages():
    docs = prep_docs(["a", {"text": "b", "id": "B"}, Document("c")], doc_ids=["x", "y", "z"])
    assert [d.doc_id for d in docs] == ["x", "B", "z"]
    assert [d.doc_id for d in prep_docs("single")] == [0]
    with pytest.raises(InvalidInputError, match="document 1 must be a string"):
        prep_docs(["a", 5])
    with pytest.raises(InvalidInputError, match="non-empty list"):
        prep_docs([])
    with pytest.raises(InvalidInputError, match="got 1 doc_ids for 2 documents"):
        prep_docs(["a", "b"], doc_ids=["x"])


@pytest.mark.parametrize("documents, message", [
    (["ok", 7], "documents: [1] must be a string or an object with a string 'text' field"),
    ([{"title": "t"}], "documents: [0]: missing field 'text'"),
    ([{"text": "t", "title": 2}], "documents: [0]: field 'title' must be a string, got int"),
    ([{"paragraph_text": "p"}], "missing field 'text'"),     # the wire takes our names only
])
def test_rerank_and_answer_parsing_refuse_with_the_same_messages(documents, message):
    with pytest.raises(APIError) as rerank:
        parse_rerank({"query": "q", "documents": documents})
    assert rerank.value.status == 400 and message in rerank.value.message
    with pytest.raises(APIError) as answer:
        parse_answer({"question": "q", "passages": documents})
    assert message.replace("documents:", "passages:") in answer.value.message


def test_wire_documents_are_echoed_as_sent():
    sent = ["a", {"text": "b", "title": "", "id": 9, "url": "https://x"}]
    assert parse_rerank({"query": "q", "documents": sent}).documents == [
        {"text": "a"}, {"text": "b", "title": "", "id": 9, "url": "https://x"}]


def test_cli_docs_file_takes_the_reference_names_and_labels(tmp_path):
    path = tmp_path / "docs.jsonl"
    rows = [{"idx": "p0", "paragraph_text": "a", "is_supporting": False},
            {"id": "p1", "title": "B", "text": "b", "is_supporting": True}, "c"]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    docs, gold = load_docs(str(path))
    assert docs == [Document("a", None, "p0"), Document("b", "B", "p1"), Document("c", None, 2)]
    assert gold == {"p1"}
    path.write_text(json.dumps(["a", 5]))
    with pytest.raises(InvalidInputError, match=r"docs.jsonl: document 1 must be a string"):
        load_docs(str(path))


def test_data_files_keep_ids_as_strings_and_name_file_and_field(tmp_path):
    path = tmp_path / "plain.jsonl"
    path.write_text(json.dumps({"query": "q", "documents": ["a", {"id": 5, "text": "b"}],
                                "gold": [5]}) + "\n")
    [example] = load_record_file(path, "jsonl")
    assert [d.doc_id for d in example.documents] == ["0", "5"]
    path.write_text(json.dumps({"id": 1, "question": "q", "documents": ["a"],
                                "gold_ids": []}) + "\n")
    with pytest.raises(DataError, match=r"plain.jsonl:1: documents\[0\] must be an object "
                                        r"with 'id' and string 'text' fields, got str"):
        load_record_file(path, "shared")
