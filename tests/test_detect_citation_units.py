"""The citation-head recipe without an engine: the answer prompt's spans with real tokenizers
on real HotpotQA records, the span registry, and the config's validation."""

from __future__ import annotations

import hashlib
import json
import typing

import pytest
from pydantic import ValidationError

from qrhead_vllm.core import TEMPLATES, Passage
from qrhead_vllm.core.prompt import append_answer, build_answer_prompts, tokenize_prompt
from qrhead_vllm.detect import DetectConfig
from qrhead_vllm.detect.checkpoint import example_key
from qrhead_vllm.detect.spans import SPANS
from qrhead_vllm.errors import InvalidInputError
from qrhead_vllm.heads import Provenance, SpanName

# (bundled tokenizer, template): SmolLM2's vocabulary has the ChatML markers, so it also
# tokenises the Qwen2.5 reference template, the one whose suffix stops before the newline.
CASES = [("smollm2-135m", "chatml"), ("smollm2-135m", "qwen2"), ("gemma3-270m", "gemma3")]


@pytest.fixture(scope="module")
def tokenizers():
    import transformers  # a missing dependency fails the test, never skips it
    from qrhead_vllm.models import resolve_model

    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = transformers.AutoTokenizer.from_pretrained(resolve_model(name).path)
        return cache[name]
    return get


@pytest.fixture(scope="module")
def examples(hotpotqa_split):
    return hotpotqa_split[0][:4]


@pytest.mark.parametrize("name,family", CASES, ids=[f"{n}-{f}" for n, f in CASES])
def test_answer_span_is_the_answer_after_the_unchanged_prompt(tokenizers, examples, name, family):
    tok, template = tokenizers(name), TEMPLATES[family]
    for ex in examples:
        passages = [Passage(d.text, d.title) for d in ex.documents]
        question = tokenize_prompt(tok, template, ex.query, passages)
        real, null = build_answer_prompts(tok, template, ex.query, passages, ex.answer)
        # The scoring prompt's tokens come first, untouched; the documents keep their spans.
        assert real.token_ids[:question.num_tokens] == question.token_ids
        assert real.doc_spans == question.doc_spans
        # The span is exactly the answer: what lies between is the chat's reply prefix.
        assert tok.decode(real.token_ids[real.query_start:]) == ex.answer
        assert tok.decode(real.token_ids[question.num_tokens:real.query_start]) \
            == template.reply_prefix
        # The null twin replaces only the answer, so it shares the whole prefix.
        assert null.query_start == real.query_start
        assert null.token_ids[:real.query_start] == real.token_ids[:real.query_start]
        assert tok.decode(null.token_ids[null.query_start:]) == "N/A"


def test_examples_of_both_shared_sets_carry_their_answer(hotpotqa_split):
    answers = [ex.answer for part in hotpotqa_split for ex in part]
    assert answers[:3] == ["Chief of Protocol", "Animorphs", "no"]
    assert all(a and a == a.strip() for a in answers)


def test_empty_answer_is_refused(tokenizers, examples):
    tok, ex = tokenizers("smollm2-135m"), examples[0]
    prompt = tokenize_prompt(tok, TEMPLATES["chatml"], ex.query, [Passage("x")])
    with pytest.raises(InvalidInputError, match="answer .* non-empty"):
        append_answer(tok, TEMPLATES["chatml"], prompt, "  ")


def test_one_span_registry_behind_config_and_provenance():
    assert set(SPANS) == set(typing.get_args(SpanName))
    assert DetectConfig.model_fields["span"].annotation is SpanName
    assert Provenance.model_fields["span"].annotation == SpanName | None


def test_bad_span_value_is_a_clear_error():
    with pytest.raises(ValidationError, match="span\n.*Input should be 'question' or 'answer'"):
        DetectConfig(data="d.jsonl", output="x.yaml", span="answers")
    assert DetectConfig(data="d.jsonl", output="x.yaml").span == "question"


def test_answer_span_keys_its_checkpoints_by_the_answer(examples):
    ex = examples[0]
    question = DetectConfig(data="d.jsonl", output="x.yaml")
    answer = DetectConfig(data="d.jsonl", output="x.yaml", span="answer")
    assert question.scoring_key("m") != answer.scoring_key("m")
    k = answer.scoring_key("m")
    changed = type(ex)(ex.qid, ex.query, ex.documents, ex.gold_ids, answer="other")
    assert example_key(k, ex, SPANS["answer"].key_parts(ex)) \
        != example_key(k, changed, SPANS["answer"].key_parts(changed))
    # The question span reads no answer: its keys are those of runs made before spans existed.
    assert SPANS["question"].key_parts(ex) == []
    docs = [[str(d.doc_id), d.title, d.text] for d in ex.documents]
    before = json.dumps([k, ex.qid, ex.query, docs, sorted(ex.gold_ids)], ensure_ascii=False)
    assert example_key(k, ex, []) == hashlib.sha256(before.encode()).hexdigest()[:24]


def test_citation_heads_are_shipped_answer_span_sets_of_their_model():
    from qrhead_vllm.head_registry import CITATION_HEADS, DEFAULT_HEADS, load_head_config

    assert CITATION_HEADS and set(CITATION_HEADS) <= set(DEFAULT_HEADS)
    for model, name in CITATION_HEADS.items():
        cite, retrieval = load_head_config(name), load_head_config(DEFAULT_HEADS[model])
        assert name.endswith("-cite") and cite.name == name
        assert (cite.provenance.span, cite.provenance.source) == ("answer", "detected")
        assert "split=detect" in cite.provenance.notes          # never the evaluation half
        cite.check_model(retrieval.model)
        assert cite.model.model_id == retrieval.model.model_id
