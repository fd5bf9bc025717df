"""Reference port of QRHead on HuggingFace transformers (the oracle for the vLLM hook).

Same maths as the reference code (docs/method.md §2.2), none of its memory: we register an
attention implementation with transformers' ``AttentionInterface`` that wraps SDPA and, in the
layers that hold selected heads, computes the selected heads' softmax rows for the query-span
positions only (queries post-RoPE, keys from the KV cache, as the attention call receives them).
Never ``output_attentions``, never an L×H×T×T tensor.

The null-query pass reuses the document prefix: the real prompt is prefilled, the cache is
cropped to the query-span start and only the null suffix is fed (docs/method.md §2.2 step 2).

Decode-time attention (:meth:`TransformersBackend.decode_mass`) is the oracle of the vLLM
decode capture, by teacher forcing: one forward over the prompt and the generated tokens but
the last, whose query rows from the prompt's last position on are the rows vLLM's decode steps
compute one at a time (``core.capture.DecodeCapture``).
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Sequence

import torch
import transformers
from transformers import AttentionInterface, AutoModelForCausalLM, AutoTokenizer, DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from qrhead_vllm.backends import InThread, MassRequest, MassResult
from qrhead_vllm.core import SpanCapture, layer_heads
from qrhead_vllm.core.capture import DecodeCapture
from qrhead_vllm.errors import CaptureError
from qrhead_vllm.heads import ModelFacts

ATTN_IMPL = "qrhead_sdpa"
_capture: contextvars.ContextVar["_Forward | None"] = contextvars.ContextVar("qrhead_capture",
                                                                              default=None)


class _StopForward(Exception):
    """Raised after the last layer that holds a selected head: later layers are not needed."""


@dataclass
class _Forward:
    """One forward pass's capture (query-span rows or decode-time mass) and where to stop."""

    capture: SpanCapture | DecodeCapture
    last_layer: int | None


def _qrhead_attention(module, query, key, value, attention_mask, **kwargs):
    """SDPA plus, when a capture is active, the selected heads' query-span rows."""
    fwd = _capture.get()
    layer = getattr(module, "layer_idx", None)
    if fwd is not None and layer in fwd.capture.layers:
        cap = fwd.capture
        offset, count = cap.span_slice()
        rows = query[0].transpose(0, 1)[offset:offset + count]        # [n, H, D]
        cap.add_layer(layer, rows, key[0], kwargs.get("scaling") or module.scaling,
                      kwargs.get("sliding_window"), key_offset=cap.step_end - key.shape[2])
        if layer == fwd.last_layer:
            raise _StopForward
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(ATTN_IMPL, _qrhead_attention)
# The mask must be built exactly as for SDPA: without this, transformers builds none for an
# unknown implementation and SDPA's top-left `is_causal` breaks every cached (suffix) forward.
# (It also drops Gemma 3's sliding-window mask, so the SDPA outputs of sliding layers were
# wrong for prompts longer than the window.)
AttentionMaskInterface.register(ATTN_IMPL, sdpa_mask)


class TransformersBackend(InThread):
    """QRHead scoring on a transformers causal LM (CPU or GPU), one prompt at a time. The whole
    model is loaded (``last_layer`` None); each forward stops after the deepest selected layer
    when ``early_exit``."""

    last_layer = None

    def __init__(self, model_path: str, model_id: str | None = None, dtype: str = "float32",
                 device: str = "cpu", early_exit: bool = True):
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=dtype if dtype == "auto" else getattr(torch, dtype),
            attn_implementation=ATTN_IMPL).to(device)
        self.model.eval()
        self.device = device
        self.early_exit = early_exit
        self.hf_config = self.model.config
        self.facts = ModelFacts.from_hf_config(self.hf_config, model_id or model_path)
        cfg = getattr(self.model.config, "text_config", None) or self.model.config
        self.max_model_len = cfg.max_position_embeddings
        self.engine_version = transformers.__version__

    def attention_mass(self, requests: Sequence[MassRequest]) -> list[MassResult]:
        return [self._one(r) for r in requests]

    def stats(self) -> dict[str, int]:
        """Nothing outlives a call here: captures live in the forward's context."""
        return {"active": 0}

    def close(self) -> None:
        self.model = None

    @torch.inference_mode()
    def _one(self, req: MassRequest) -> MassResult:
        cache = DynamicCache()  # full (non-sliding) layers, so crop() works for every layer
        real = self._forward(req.real.token_ids, 0, req.real, cache, req.heads)
        null = None
        if req.null is not None:
            cache.crop(-req.real.query_len)   # drop the real query span, keep the documents
            assert cache.get_seq_length() == req.real.query_start
            null = self._forward(req.null.token_ids[req.real.query_start:], req.real.query_start,
                                 req.null, cache, req.heads)
        return MassResult(real, null)

    @torch.inference_mode()
    def decode_mass(self, prompt_ids: Sequence[int], generated_ids: Sequence[int],
                    heads: Sequence, doc_spans: Sequence[tuple[int, int]]) -> torch.Tensor:
        """``[G, H, N]`` fp32: for each of the G generated tokens, each head's attention mass on
        each document span in the step that emitted it (row 0: the prompt's last token; row
        ``i``: generated token ``i - 1``), by teacher forcing in one forward pass."""
        f, num_prompt = self.facts, len(prompt_ids)
        ids = list(prompt_ids) + list(generated_ids[:-1])
        cap = DecodeCapture(num_prompt - 1, layer_heads(heads, f.num_heads, f.num_kv_heads),
                            tuple(map(tuple, doc_spans)), num_prompt)
        rows = self._capture_forward(ids, 0, cap, DynamicCache())            # [H, G, N]
        return rows.permute(1, 0, 2).contiguous()

    def _forward(self, ids, start: int, prompt, cache, heads) -> torch.Tensor:
        """Prefill ``ids`` (prompt positions ``start..``) and return the ``[len(heads), T]``
        mean span rows in the caller's head order."""
        f = self.facts
        cap = SpanCapture(prompt.query_start, prompt.num_tokens,
                          layer_heads(heads, f.num_heads, f.num_kv_heads))
        return self._capture_forward(ids, start, cap, cache)

    def _capture_forward(self, ids, start: int, cap: SpanCapture | DecodeCapture,
                         cache) -> torch.Tensor:
        """Run ``ids`` (positions ``start..``) through the model with ``cap`` capturing; its
        result in the caller's head order."""
        cap.begin_step(start, len(ids))
        token = _capture.set(_Forward(cap, max(cap.layers) if self.early_exit else None))
        try:
            x = torch.tensor([list(ids)], device=self.device)
            self.model(input_ids=x, past_key_values=cache, use_cache=True, logits_to_keep=1)
        except _StopForward:
            pass
        finally:
            _capture.reset(token)
        cap.end_step()
        res = cap.result()
        if res.error is not None:
            raise CaptureError(f"reference port capture failed: {res.error}")
        out = torch.empty_like(res.rows)
        out[res.index] = res.rows
        return out
