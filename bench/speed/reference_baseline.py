"""The published QRHead algorithm's cost on this box: the speed bench's reference baseline.

What princeton-pli/QRHead's ``QRRetriever.score_docs`` does per query (docs/method.md §2.2, §6),
in torch on the CPU, fp32, on the same model as our engines:

1. real pass: a forward over the whole prompt through **every** layer (no LM head: the
   reference's ``compute_logits=False``), keeping the full KV cache of every layer and each
   layer's post-RoPE queries of the query-span positions (its ``DynamicCacheWithQuery``);
2. for **every** layer and **every** head (L×H), recompute the span's attention rows from the
   cached keys: ``repeat_kv``, pre-scaled ``q·kᵀ``, a dense causal mask as large as the scores,
   logsumexp softmax, mean over the span rows, the layers stacked to ``[L, H, T]``;
3. null pass: crop the cache to the query-span start, run the "N/A" suffix through every layer,
   recompute all L×H rows again;
4. only then select the configured heads (calibration, masking and document sums are the
   core's ``score_documents``, shared with every backend).

Attention inside the forward is transformers' SDPA: the reference uses FlashAttention-2 on a GPU,
which has no CPU kernel; SDPA is the fastest exact attention transformers offers here. This is
a bench baseline, not a product backend (``ScoringBackend`` shaped so the ranker can score with
it): the maths are the reference's, the per-head selection comes last as in the reference.
"""

from __future__ import annotations

import contextvars
from typing import Sequence

import torch
import transformers
from transformers import AttentionInterface, AutoModelForCausalLM, AutoTokenizer, DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from bench.speed.gpu_capture import reference_layer
from qrhead_vllm.backends import InThread, MassRequest, MassResult
from qrhead_vllm.heads import ModelFacts

ATTN_IMPL = "qrhead_reference_recompute"
# layer -> post-RoPE queries [1, H, n, D] of the span rows of the running forward
_span_queries: contextvars.ContextVar[dict | None] = contextvars.ContextVar(
    "qrhead_reference_queries", default=None)


def _recording_sdpa(module, query, key, value, attention_mask, **kwargs):
    """SDPA; while a pass records, also keep this layer's span queries (the reference's
    query cache). The span runs to the end of the prompt, so it is the last rows of the step."""
    store = _span_queries.get()
    if store is not None:
        store[module.layer_idx] = query[:, :, -store["span"]:].clone()
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(ATTN_IMPL, _recording_sdpa)
AttentionMaskInterface.register(ATTN_IMPL, sdpa_mask)   # the mask SDPA would get


def all_heads_rows(queries: dict, cache: DynamicCache, num_layers: int) -> torch.Tensor:
    """Step 2: every layer's and head's mean span rows, ``[L, H, T]``, the reference's way."""
    per_layer = []
    for layer in range(num_layers):
        probs = reference_layer(queries[layer], cache.layers[layer].keys, prescale=True)
        per_layer.append(probs.mean(2)[0])         # mean over the span rows: [H, T]
    return torch.stack(per_layer)


class ReferenceAlgorithm(InThread):
    """QRHead's reference algorithm on a transformers model (fp32 CPU by default)."""

    last_layer = None                               # every layer, as the reference does

    def __init__(self, model_path: str, model_id: str | None = None, dtype: str = "float32"):
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=getattr(torch, dtype), attn_implementation=ATTN_IMPL).eval()
        self.hf_config = self.model.config
        self.facts = ModelFacts.from_hf_config(self.hf_config, model_id or model_path)
        if getattr(self.hf_config, "sliding_window", None) and \
                "sliding_attention" in (getattr(self.hf_config, "layer_types", None) or ()):
            raise ValueError("the reference algorithm has no sliding-window attention "
                             "(Llama / Qwen2 only); pick a model without it")
        self.max_model_len = self.hf_config.max_position_embeddings
        self.engine_version = transformers.__version__

    @torch.inference_mode()
    def _pass(self, ids: Sequence[int], span: int, cache: DynamicCache) -> torch.Tensor:
        """Steps 1/3 and 2: a forward through every layer, then the L×H recompute."""
        queries = {"span": span}
        token = _span_queries.set(queries)
        try:
            self.model.model(input_ids=torch.tensor([list(ids)]), past_key_values=cache,
                             use_cache=True)
        finally:
            _span_queries.reset(token)
        return all_heads_rows(queries, cache, self.facts.num_layers)

    def attention_mass(self, requests: Sequence[MassRequest]) -> list[MassResult]:
        out = []
        for req in requests:
            cache = DynamicCache()
            real = self._pass(req.real.token_ids, req.real.query_len, cache)
            null = None
            if req.null is not None:
                cache.crop(-req.real.query_len)            # keep the documents' KV
                null = self._pass(req.null.token_ids[req.real.query_start:],
                                  req.null.query_len, cache)
            out.append(MassResult(_select(real, req.heads),
                                  None if null is None else _select(null, req.heads)))
        return out

    def stats(self) -> dict[str, int]:
        return {"active": 0}

    def close(self) -> None:
        self.model = None


def _select(rows: torch.Tensor, heads) -> torch.Tensor:
    """Step 4: the configured heads' rows, after everything was computed."""
    layers = torch.tensor([layer for layer, _ in heads])
    index = torch.tensor([head for _, head in heads])
    return rows[layers, index].float()
