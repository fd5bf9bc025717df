"""Scoring prompts: exact strings of the reference templates, and token spans checked with the
real tokenizers of the bundled models on real HotpotQA documents."""

from __future__ import annotations

import pytest

from qrhead_vllm.core import TEMPLATES, Passage, build_scoring_prompts
from qrhead_vllm.core.prompt import INSTRUCTION, render

QUERY = "who wrote it?"
DOCS = [Passage("Body one.", "Title One"), Passage("Body two.")]


# --- string level: the reference's Llama-3 and Qwen2.5 prompts (docs/method.md §2.1) -------

LLAMA3_PROMPT = (
    "<|start_header_id|>user<|end_header_id|> Here are some paragraphs:"
    " \n\n[1] Title One\nBody one."
    " \n\n[2] Body two."
    " \n\nPlease find information that are relevant to the following query in the paragraphs above."
    " \n\nQuery: who wrote it?"
    "<|eot_id|><|start_header_id|>assistant<|end_header_id|>"
)
QWEN2_PROMPT = (
    "<|im_start|>user Here are some paragraphs:"
    "\n\n[1] Title One\nBody one."
    "\n\n[2] Body two."
    "\n\nPlease find information that are relevant to the following query in the paragraphs above."
    "\n\nQuery: who wrote it?"
    "<|im_end|>\n<|im_start|>assistant"
)


@pytest.mark.parametrize("family,expected", [("llama3", LLAMA3_PROMPT), ("qwen2", QWEN2_PROMPT)])
def test_reference_templates_render_exactly(family, expected):
    text, char_spans, query_char = render(TEMPLATES[family], QUERY, DOCS)
    assert text == expected
    assert [text[a:b] for a, b in char_spans] == ["[1] Title One\nBody one.", "[2] Body two."]
    # The query span starts at the instruction and runs to the end, chat suffix included.
    assert text[query_char:].startswith(INSTRUCTION)
    assert text.endswith(TEMPLATES[family].suffix)


# --- token level, real tokenizers and documents --------------------------------------------

BUNDLED = [("smollm2-135m", "chatml"), ("gemma3-270m", "gemma3")]
NUM_EXAMPLES = 4


@pytest.fixture(scope="module")
def examples(hotpotqa_split):
    return hotpotqa_split[1][:NUM_EXAMPLES]


@pytest.fixture(scope="module", params=BUNDLED, ids=[name for name, _ in BUNDLED])
def tokenizer_and_template(request):
    import transformers  # a missing dependency fails the test, never skips it
    from qrhead_vllm.models import resolve_model
    name, family = request.param
    path = resolve_model(name).path  # the dequantised bundled model (cached after first use)
    return transformers.AutoTokenizer.from_pretrained(path), TEMPLATES[family]


def build(tokenizer, template, example):
    passages = [Passage(d.text, d.title) for d in example.documents]
    real, null = build_scoring_prompts(tokenizer, template, example.query, passages)
    return passages, real, null


def test_doc_spans_cover_index_title_and_text(tokenizer_and_template, examples):
    tok, template = tokenizer_and_template
    for ex in examples:
        passages, real, _ = build(tok, template, ex)
        assert len(real.doc_spans) == len(passages)
        for i, ((a, b), p) in enumerate(zip(real.doc_spans, passages), start=1):
            decoded = tok.decode(real.token_ids[a:b])
            assert f"[{i}] {p.title}\n" in decoded
            assert p.text[:40] in decoded
            # Both ends are tight: no separator or neighbour leaks into the span.
            assert decoded.startswith(f"[{i}] ") and decoded.endswith(p.text[-20:])


def test_query_span_is_instruction_query_and_suffix(tokenizer_and_template, examples):
    tok, template = tokenizer_and_template
    for ex in examples:
        _, real, null = build(tok, template, ex)
        tail = INSTRUCTION + template.separator + "Query: "
        assert tok.decode(real.token_ids[real.query_start:]) == tail + ex.query + template.suffix
        assert tok.decode(null.token_ids[null.query_start:]) == tail + "N/A" + template.suffix


def test_null_prompt_shares_the_prefix(tokenizer_and_template, examples):
    tok, template = tokenizer_and_template
    for ex in examples:
        _, real, null = build(tok, template, ex)
        q0 = real.query_start
        assert null.query_start == q0
        assert null.token_ids[:q0] == real.token_ids[:q0]
        assert null.doc_spans == real.doc_spans
        assert null.num_tokens < real.num_tokens  # "N/A" is shorter than any question here


def test_spans_are_ordered_and_disjoint(tokenizer_and_template, examples):
    tok, template = tokenizer_and_template
    for ex in examples:
        _, real, _ = build(tok, template, ex)
        bounds = [real.doc_spans[0][0]]
        for a, b in real.doc_spans:
            assert a < b
            bounds += [a, b]
        bounds.append(real.query_start)
        assert bounds == sorted(bounds)
        assert real.doc_spans[0][0] > 0          # the chat prefix and intro come first
        assert real.query_start < real.num_tokens
        # Only separators lie between spans: a few tokens each, never a lost document.
        gaps = [c - b for (_, b), (c, _) in zip(real.doc_spans, real.doc_spans[1:])]
        assert max(gaps) <= 3
