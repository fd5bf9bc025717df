"""The pure parts of chat with documents (serve/chat_documents.py, core/citations.token_offsets):
which requests are ours, the 400s, the extension object and where it goes in a stream. The
route itself runs against the real app in tests/test_serve_chat_documents.py."""

from __future__ import annotations

import asyncio
import json

import pytest

from qrhead_vllm.core.citations import token_offsets
from qrhead_vllm.serve.chat_documents import (documents_extension, parse_document_chat,
                                              stream_with_extension, wants_documents)
from qrhead_vllm.serve.errors import APIError

USER = [{"role": "user", "content": "Who?"}]


@pytest.mark.parametrize("method,path,body,ours", [
    ("POST", "v1/chat/completions", {"messages": USER, "documents": ["a"]}, True),
    ("POST", "v1/chat/completions", {"messages": USER, "documents": []}, True),   # → 400 later
    ("POST", "v1/chat/completions", {"messages": USER, "documents": None}, False),
    ("POST", "v1/chat/completions", {"messages": USER}, False),
    ("POST", "v1/completions", {"prompt": "x", "documents": ["a"]}, False),
    ("GET", "v1/chat/completions", {"documents": ["a"]}, False),
])
def test_only_chats_with_documents_are_ours(method, path, body, ours):
    assert (wants_documents(method, path, json.dumps(body).encode()) is not None) == ours


def test_malformed_json_stays_vllms_to_answer():
    assert wants_documents("POST", "v1/chat/completions", b'{"documents": [') is None


def test_parse_keeps_the_chat_body_for_vllm_and_normalises_documents():
    req = parse_document_chat({"model": "m", "messages": USER, "max_tokens": 3,
                               "documents": ["a", {"text": "b", "title": "B"}],
                               "qrhead": {"heads": "all", "citations": False}})
    assert req.question == "Who?" and req.chat == {"model": "m", "messages": USER,
                                                   "max_tokens": 3}
    assert req.documents == [{"text": "a"}, {"text": "b", "title": "B"}]
    assert req.options.heads == "all" and req.options.citations is False


def test_text_parts_make_the_question():
    parts = [{"type": "text", "text": "Who"}, {"type": "text", "text": "wrote it?"}]
    req = parse_document_chat({"messages": [{"role": "user", "content": parts}],
                               "documents": ["a"]})
    assert req.question == "Who\nwrote it?"


@pytest.mark.parametrize("body,param,words", [
    ({"documents": []}, "documents", "non-empty list"),
    ({"documents": [{"title": "t"}]}, "documents", "documents[0]"),
    ({"messages": []}, "messages", "one user message"),
    ({"messages": [{"role": "system", "content": "s"}] + USER}, "messages",
     "Fold what they say into the question"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages",
     "must be text"),
    ({"messages": [{"role": "user", "content": "  "}]}, "messages", "non-empty text"),
    ({"qrhead": {"citations": [1]}}, "qrhead", "citations"),
    ({"qrhead": {"per_head": True}}, "qrhead", "per_head: is not a known option"),
])
def test_bad_requests_are_400s_naming_the_field(body, param, words):
    with pytest.raises(APIError) as e:
        parse_document_chat({"messages": USER, "documents": ["a"]} | body)
    assert e.value.status == 400 and e.value.param == param and words in e.value.message


def test_extension_ranks_best_first_ties_by_index():
    ext = documents_extension([0.1, 0.5, 0.1], {"heads": "default"}, 42)
    assert ext["documents"] == [{"index": 1, "score": 0.5, "rank": 1},
                                {"index": 0, "score": 0.1, "rank": 2},
                                {"index": 2, "score": 0.1, "rank": 3}]
    assert ext["heads"] == "default" and ext["prompt_tokens"] == 42


def _chunk(content: str | None, cid: str = "chatcmpl-1") -> str:
    delta = {"content": content} if content is not None else {"role": "assistant"}
    return "data: " + json.dumps({"id": cid, "object": "chat.completion.chunk", "created": 1,
                                  "model": "m", "choices": [{"index": 0, "delta": delta}]}) \
        + "\n\n"


def test_stream_gets_scores_first_and_citations_as_sentences_close():
    async def chunks():
        for c in [_chunk(None), _chunk("Paris."), _chunk(" It"), _chunk(" is."),
                  "data: [DONE]\n\n"]:
            yield c

    async def scores():
        return {"documents": [{"index": 0, "score": 1.0, "rank": 1}]}

    asked = []

    async def closed():                         # the route's: new closed sentences only
        asked.append("closed")
        return [{"text": "Paris."}] if len(asked) == 2 else []

    async def rest():
        return [{"text": "It is."}]

    async def run():
        return [c async for c in stream_with_extension(chunks(), scores, closed, rest)]

    events = [b.decode().removeprefix("data: ").strip() for b in asyncio.run(run())]
    objects = [json.loads(e) if e != "[DONE]" else e for e in events]
    assert objects[0]["qrhead"]["documents"][0]["index"] == 0
    assert "qrhead" not in objects[1] and "qrhead" not in objects[2]
    # " It" closed "Paris.": its citation follows that chunk; the rest comes before [DONE].
    assert objects[3]["choices"] == [] and objects[3]["id"] == "chatcmpl-1"
    assert objects[3]["qrhead"]["citations"] == [{"text": "Paris."}]
    assert objects[5]["qrhead"]["citations"] == [{"text": "It is."}]
    assert objects[-1] == "[DONE]" and len(objects) == 7 and asked == ["closed"] * 3


def test_stream_without_citations_passes_chunks_through():
    async def chunks():
        for c in [_chunk(None), _chunk("Paris."), "data: [DONE]\n\n"]:
            yield c

    async def scores():
        return {"documents": []}

    async def run():
        return [c async for c in stream_with_extension(chunks(), scores)]

    out = asyncio.run(run())
    assert len(out) == 3 and out[1] == _chunk("Paris.").encode()
    assert out[-1] == b"data: [DONE]\n\n"


class ToyTokenizer:
    """Decodes ids as words of a vocabulary; id 0 is a special token (empty when skipped)."""

    vocab = {0: "<eos>", 1: "Paris", 2: " is", 3: ".", 4: " big"}

    def decode(self, ids, skip_special_tokens=True):
        return "".join("" if (i == 0 and skip_special_tokens) else self.vocab[i] for i in ids)


def test_token_offsets_follow_the_decoded_prefixes_and_clip_to_the_text():
    tok = ToyTokenizer()
    assert token_offsets(tok, [1, 2, 3, 0], "Paris is.") == [(0, 5), (5, 8), (8, 9), (9, 9)]
    # a stop string cut the text after " is": later tokens get empty spans at its end
    assert token_offsets(tok, [1, 2, 4], "Paris is") == [(0, 5), (5, 8), (8, 8)]


def test_a_failed_capture_becomes_an_error_event_and_the_answer_streams_on():
    async def chunks():
        for c in [_chunk(None), _chunk("Paris."), "data: [DONE]\n\n"]:
            yield c

    async def scores():
        raise RuntimeError("capture lost")

    async def never():
        raise AssertionError("no citations after the scores failed")

    async def run():
        return [c async for c in stream_with_extension(chunks(), scores, never, never)]

    out = b"".join(asyncio.run(run())).decode()
    assert '"scores failed: RuntimeError: capture lost"' in out
    assert '"content": "Paris."' in out and out.endswith("data: [DONE]\n\n")
