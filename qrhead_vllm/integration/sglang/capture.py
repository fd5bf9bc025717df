"""SGLang's side of the capture: its step metadata for the core driver, its results attached to
the request's own output.

The patches (``qrhead_vllm.patches.sglang_0_NN``) call, in the scheduler process,
:meth:`SGLangCapture.begin_step` with the ``ScheduleBatch`` before a forward,
:meth:`on_attention` after each ``RadixAttention`` call (this step's keys are in the pool by
then) and :meth:`end_step` after the forward. What is SGLang's here: an extend batch's
``reqs`` / ``prefix_lens`` / ``extend_lens``, the spec in ``SamplingParams.custom_params``,
the token pool read as a block-size-1 paged cache (``req_to_token`` rows as block tables,
``get_key_buffer(layer)`` as ``[slots, H_kv, D]``) and the delivery: a finished request's
result goes to ``req.customized_info``, which SGLang ships with its output
(``meta_info["qrhead"]``); nothing is kept for it afterwards. A request aborted or finished
before its last prompt token is dropped by :meth:`prune` (every step, and when the scheduler
idles). Everything else is :class:`~qrhead_vllm.core.driver.CaptureDriver`'s.
"""

from __future__ import annotations

import weakref

from qrhead_vllm.core.driver import CaptureDriver, LayerInput, ModelShape, StepRow
from qrhead_vllm.integration.request_spec import NAMESPACE, encode_result, read_spec

# A spec asking for decode-time capture fails its request with this (never empty numbers): the
# hooks here run on extend batches only, decode batches are never captured.
DECODE_REFUSAL = ("decode-time capture (spec doc_spans: citations while decoding) is not "
                  "implemented on the SGLang engine; serve the model on vLLM for citations")


class SGLangCapture:
    """The capture adapter of one SGLang scheduler process."""

    def __init__(self):
        self.driver = CaptureDriver()
        self.shape: ModelShape | None = None     # set by configure() at start-up

    def configure(self, num_heads: int, num_kv_heads: int, num_layers: int) -> None:
        """The model's global head counts (verified at start-up, tensor parallelism off)."""
        self.shape = ModelShape(num_heads, num_kv_heads, num_layers)

    def stats(self) -> dict[str, int]:
        return {"active": len(self.driver.requests)}

    # --- step boundaries --------------------------------------------------------------------
    def begin_step(self, batch) -> None:
        """Plan this forward: which rows of an extend batch are scoring requests."""
        if self.driver.requests:
            self.prune()
        extend = batch is not None and batch.forward_mode.is_extend()
        self.driver.begin_step(self._rows(batch) if extend else ())   # decode / idle: none

    def _rows(self, batch):
        offset = 0
        for req, first, count in zip(batch.reqs, batch.prefix_lens, batch.extend_lens):
            if req.rid in self.driver.requests or self._admit(req):
                yield StepRow(req.rid, first, count, offset, req.kv.req_pool_idx)
            offset += count

    def _admit(self, req) -> bool:
        params = getattr(req.sampling_params, "custom_params", None)
        spec, error = read_spec(params)
        if spec is None and error is None:
            return False                               # an ordinary request
        if spec is not None and spec.doc_spans:
            error = error or DECODE_REFUSAL
        self.driver.admit(req.rid, spec, len(req.origin_input_ids), self.shape, error,
                          handle=weakref.ref(req))     # never keeps SGLang's Req alive
        return True

    def end_step(self) -> None:
        """Close the step; hand finished results to their requests."""
        for tracked in self.driver.end_step():
            req = tracked.handle()
            if req is not None:
                req.customized_info = {**(req.customized_info or {}),
                                       NAMESPACE: [encode_result(tracked)]}

    def prune(self) -> None:
        """Forget requests that ended (finished, aborted, freed) before their last prompt token."""
        self.driver.forget([rid for rid, tracked in self.driver.requests.items()
                            if (req := tracked.handle()) is None or req.finished()])

    # --- per layer (the RadixAttention wrapper) ---------------------------------------------
    def on_attention(self, layer, q, k) -> None:
        if not self.driver.capturing:
            return                                    # ordinary requests only: nothing to do
        from sglang.srt.model_executor.forward_context import (get_req_to_token_pool,
                                                                get_token_to_kv_pool)
        key_buffer = get_token_to_kv_pool().get_key_buffer(layer.layer_id)   # [slots, Hkv, D]
        head_dim = layer.qk_head_dim
        self.driver.on_layer(LayerInput(
            layer.layer_id, q.view(-1, layer.tp_q_head_num, head_dim),
            None if k is None else k.reshape(-1, layer.tp_k_head_num, head_dim),
            key_buffer.unsqueeze(1), get_req_to_token_pool().req_to_token, layer.scaling,
            sliding_window_of(layer)))


def sliding_window_of(layer) -> int | None:
    """Window in tokens (a row at p sees p-W+1..p): SGLang stores W-1, -1 for full attention."""
    w = getattr(layer, "sliding_window_size", -1)
    return None if w is None or w < 0 else int(w) + 1


STORE = SGLangCapture()
