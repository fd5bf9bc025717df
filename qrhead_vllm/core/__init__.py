"""Torch-only scoring core. Imports nothing from vllm, ray or transformers (a test enforces it)."""

from qrhead_vllm.core.attention import gather_paged_keys, paged_blocks, span_attention_rows
from qrhead_vllm.core.capture import CaptureResult, LayerHeads, SpanCapture, layer_heads
from qrhead_vllm.core.heads import (Head, LocalHead, beyond_last_layer, heads_by_layer,
                                    shard_heads)
from qrhead_vllm.core.prompt import (
    TEMPLATES, Passage, PromptTemplate, ScoringPrompt, build_scoring_prompts, truncate_words,
)
from qrhead_vllm.core.scoring import calibrate, doc_scores, score_documents

__all__ = [
    "gather_paged_keys", "paged_blocks", "span_attention_rows", "CaptureResult", "LayerHeads",
    "SpanCapture", "layer_heads", "Head", "LocalHead", "beyond_last_layer", "heads_by_layer",
    "shard_heads", "TEMPLATES", "Passage", "PromptTemplate", "ScoringPrompt",
    "build_scoring_prompts", "truncate_words", "calibrate", "doc_scores", "score_documents",
]
