"""Scoring prompts: documents first, the query last, with token spans for every part.

Layout (docs/method.md §2.1, as the reference QRHead code builds it, by string concatenation,
no chat template, no system prompt)::

    PREFIX + " Here are some paragraphs:" + Σ_i (SEP + "[i] " + [title + "\\n"] + text)
    + SEP + INSTRUCTION + SEP + "Query:" + " " + query + SUFFIX

The query span runs from the first token of INSTRUCTION to the end of the prompt, so it includes
the instruction and the chat suffix (docs/method.md §1.3). Documents span "[i] " through their
text.

The tokenizer is duck-typed (a HuggingFace *fast* tokenizer: ``__call__`` with
``return_offsets_mapping``) so this module needs torch only, not transformers.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any, Sequence

from qrhead_vllm.errors import InvalidInputError

INSTRUCTION = "Please find information that are relevant to the following query in the paragraphs above."
INTRO = " Here are some paragraphs:"
NULL_QUERY = "N/A"


@dataclass(frozen=True)
class PromptTemplate:
    """The chat markers of one model family."""

    family: str
    prefix: str
    separator: str
    suffix: str
    # What a chat template puts between the assistant header and the reply; the reference
    # suffixes of Llama-3 and Qwen2.5 stop before it, ours (ChatML, Gemma 3) end with it.
    reply_prefix: str = ""


# Llama-3.x and Qwen2.5 exactly as the reference builds them (docs/method.md §2.1).
LLAMA3 = PromptTemplate(
    "llama3",
    "<|start_header_id|>user<|end_header_id|>",
    " \n\n",
    "<|eot_id|><|start_header_id|>assistant<|end_header_id|>",
    "\n\n",
)
QWEN2 = PromptTemplate("qwen2", "<|im_start|>user", "\n\n", "<|im_end|>\n<|im_start|>assistant",
                       "\n")
# Our own: the markers of each model's chat template (ChatML for SmolLM2, turns for Gemma 3).
CHATML = PromptTemplate("chatml", "<|im_start|>user\n", "\n\n", "<|im_end|>\n<|im_start|>assistant\n")
GEMMA3 = PromptTemplate("gemma3", "<start_of_turn>user\n", "\n\n", "<end_of_turn>\n<start_of_turn>model\n")

TEMPLATES = {t.family: t for t in (LLAMA3, QWEN2, CHATML, GEMMA3)}


@dataclass(frozen=True)
class Passage:
    """One document as the prompt sees it (after normalisation by the caller)."""

    text: str
    title: str | None = None


@dataclass(frozen=True)
class ScoringPrompt:
    """Token ids of one scoring prompt and where its parts are.

    ``doc_spans`` are half-open token ranges ``[start, end)``; the query span is
    ``[query_start, num_tokens)``.
    """

    token_ids: tuple[int, ...]
    doc_spans: tuple[tuple[int, int], ...]
    query_start: int

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def query_len(self) -> int:
        return self.num_tokens - self.query_start


def render(template: PromptTemplate, query: str, passages: Sequence[Passage]):
    """Return the prompt text, each document's char span and the query span's first char."""
    parts = [template.prefix, INTRO]
    pos = len(template.prefix) + len(INTRO)
    char_spans = []
    for i, p in enumerate(passages, start=1):
        doc = f"[{i}] " + (f"{p.title}\n" if p.title is not None else "") + p.text
        parts += [template.separator, doc]
        pos += len(template.separator)
        char_spans.append((pos, pos + len(doc)))
        pos += len(doc)
    parts.append(template.separator)
    query_char = pos + len(template.separator)
    parts += [INSTRUCTION, template.separator, "Query:", " " + query, template.suffix]
    return "".join(parts), char_spans, query_char


class _OffsetIndex:
    """Char -> token lookups by bisection over the offsets of non-empty tokens (special tokens
    added by the tokenizer have empty offsets and never belong to a span)."""

    def __init__(self, offsets: Sequence[tuple[int, int]]):
        self.index = [i for i, (a, b) in enumerate(offsets) if a < b]
        self.starts = [offsets[i][0] for i in self.index]
        self.ends = [offsets[i][1] for i in self.index]

    def span(self, start: int, end: int) -> tuple[int, int]:
        """Tokens overlapping chars [start, end): first char's token .. last char's token."""
        first = bisect.bisect_right(self.ends, start)
        last = bisect.bisect_left(self.starts, end) - 1
        if first > last:
            raise InvalidInputError(f"no token covers characters {start}..{end} of the prompt")
        return self.index[first], self.index[last] + 1


def tokenize_prompt(tokenizer: Any, template: PromptTemplate, query: str,
                    passages: Sequence[Passage]) -> ScoringPrompt:
    """Tokenise once (ids and char offsets in the same call) and map char spans to tokens."""
    text, char_spans, query_char = render(template, query, passages)
    enc = tokenizer(text, return_offsets_mapping=True)
    index = _OffsetIndex([tuple(o) for o in enc["offset_mapping"]])
    doc_spans = tuple(index.span(a, b) for a, b in char_spans)
    query_start, _ = index.span(query_char, len(text))
    return ScoringPrompt(tuple(enc["input_ids"]), doc_spans, query_start)


def build_scoring_prompts(tokenizer: Any, template: PromptTemplate, query: str,
                          passages: Sequence[Passage], null_query: str = NULL_QUERY
                          ) -> tuple[ScoringPrompt, ScoringPrompt]:
    """The real prompt and its calibration twin (same documents, ``null_query`` as the query).

    Raises:
        InvalidInputError: if the two prompts do not share their tokens up to the query span,
            which calibration through the prefix cache relies on.
    """
    real = tokenize_prompt(tokenizer, template, query, passages)
    null = tokenize_prompt(tokenizer, template, null_query, passages)
    return _shared_prefix(real, null)


def _shared_prefix(real: ScoringPrompt, null: ScoringPrompt) -> tuple[ScoringPrompt, ScoringPrompt]:
    q0 = real.query_start
    if null.query_start != q0 or null.token_ids[:q0] != real.token_ids[:q0]:
        raise InvalidInputError("real and null prompts tokenise differently before the query span")
    return real, null


def truncate_words(text: str, max_words: int | None) -> str:
    """The reference's BEIR preprocessing: strip, keep the first ``max_words`` space-split words."""
    text = text.strip()
    if max_words is None:
        return text
    return " ".join(text.split(" ")[:max_words])


def append_answer(tokenizer: Any, template: PromptTemplate, prompt: ScoringPrompt,
                  answer: str) -> ScoringPrompt:
    """``prompt`` followed by ``answer`` as the assistant's reply (teacher forcing), the span
    moved onto the answer's tokens: ``[query_start, num_tokens)`` is then the answer alone.

    The reply is tokenised on its own (no special tokens), so the prompt's tokens stay exactly
    those of the scoring prompt; ``template.reply_prefix`` (the chat template's newline after
    the assistant header) goes before it and stays outside the span.

    Raises:
        InvalidInputError: for an empty answer.
    """
    if not isinstance(answer, str) or not answer.strip():
        raise InvalidInputError("the answer to score must be a non-empty string")
    text = template.reply_prefix + answer.strip()
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    first, _ = _OffsetIndex([tuple(o) for o in enc["offset_mapping"]]).span(
        len(template.reply_prefix), len(text))
    return ScoringPrompt(prompt.token_ids + tuple(enc["input_ids"]), prompt.doc_spans,
                         prompt.num_tokens + first)


def build_answer_prompts(tokenizer: Any, template: PromptTemplate, query: str,
                         passages: Sequence[Passage], answer: str,
                         null_answer: str = NULL_QUERY) -> tuple[ScoringPrompt, ScoringPrompt]:
    """The scoring prompt with ``answer`` as the reply, and its calibration twin: the same
    prompt with ``null_answer`` as the reply. The twins share every token before the answer
    span, so the null pass reuses the prefix (cache) exactly as the question's null does.

    Raises:
        InvalidInputError: for an empty answer, or if the twins tokenise differently before
            the answer span.
    """
    prompt = tokenize_prompt(tokenizer, template, query, passages)
    return _shared_prefix(append_answer(tokenizer, template, prompt, answer),
                          append_answer(tokenizer, template, prompt, null_answer))
