"""Per-request capture of selected-head attention rows in SGLang's scheduler process.

The patches (``qrhead_vllm.patches.sglang_0_NN``) drive one :class:`CaptureStore`:

* ``begin_step(batch)`` before a forward: for every scoring request of an extend (prefill)
  batch whose query span intersects this step's tokens, open a step on its
  :class:`~qrhead_vllm.core.SpanCapture` (created the first time the request is seen);
* ``on_attention(layer, q, k)`` after each ``RadixAttention`` call, when this step's keys are
  already in the pool: the span rows' queries, and the keys of the whole sequence read from
  the token pool (``req_to_token`` row as the block table of a block-size-1 paged cache);
* ``end_step()`` after the forward: a request whose step held its last prompt token gets its
  result in ``req.customized_info``, which SGLang ships with the request's output
  (``meta_info["qrhead"]``); nothing is kept for it afterwards.

A request aborted or finished before its last prompt token is dropped by :meth:`prune` (called
at every step and when the scheduler idles), so an abort leaves nothing behind.
"""

from __future__ import annotations

import logging
import time
import weakref
from dataclasses import dataclass

from qrhead_vllm.core import SpanCapture, gather_paged_keys, layer_heads
from qrhead_vllm.integration.sglang import RESULT_KEY
from qrhead_vllm.integration.sglang.request_spec import RequestSpec, encode_result

logger = logging.getLogger(__name__)


@dataclass
class _Request:
    capture: SpanCapture
    req: weakref.ref            # SGLang's Req: never kept alive by us
    seconds: float = 0.0        # host time spent capturing (a metric, not a measurement)
    checked_step: bool = False  # the KV self-check runs on the first captured layer of a step


@dataclass(frozen=True)
class _Row:
    """One scoring request's slice of this step's flattened batch."""

    token_offset: int    # first token of the request in the step's flattened q / k
    pool_row: int        # its req_to_token row
    state: _Request


class CaptureStore:
    """All capture state of one scheduler process, keyed by request id."""

    def __init__(self):
        self.active: dict[str, _Request] = {}
        self.num_heads = self.num_kv_heads = 0     # set by configure() at start-up
        self.num_layers = 0
        self._plan: list[_Row] | None = None

    def configure(self, num_heads: int, num_kv_heads: int, num_layers: int) -> None:
        """The model's global head counts (verified at start-up, tensor parallelism off)."""
        self.num_heads, self.num_kv_heads, self.num_layers = num_heads, num_kv_heads, num_layers

    def stats(self) -> dict[str, int]:
        return {"active": len(self.active)}

    # --- step boundaries --------------------------------------------------------------------
    def begin_step(self, batch) -> None:
        """Plan this forward: which rows of an extend batch are scoring requests."""
        self._plan = None
        if self.active:
            self.prune()
        if batch is None or not batch.forward_mode.is_extend():
            return                                    # decode / idle: nothing to capture
        plan, offset = [], 0
        for req, first, count in zip(batch.reqs, batch.prefix_lens, batch.extend_lens):
            state = self._state_of(req)
            if state is not None and state.capture.begin_step(first, count):
                state.checked_step = False
                plan.append(_Row(offset, req.kv.req_pool_idx, state))
            offset += count
        self._plan = plan

    def end_step(self) -> None:
        """Close the step; hand finished results to their requests."""
        plan, self._plan = self._plan, None
        for row in plan or ():
            if row.state.capture.end_step():
                self._finish(row.state)

    def _finish(self, state: _Request) -> None:
        req = state.req()
        self.active = {k: s for k, s in self.active.items() if s is not state}
        if req is None:
            return
        payload = encode_result(state.capture.result(), state.seconds)
        req.customized_info = {**(req.customized_info or {}), RESULT_KEY: [payload]}

    def prune(self) -> None:
        """Forget requests that ended (finished, aborted, freed) before their last prompt token."""
        for rid, state in list(self.active.items()):
            req = state.req()
            if req is None or req.finished():
                del self.active[rid]

    def _state_of(self, req) -> _Request | None:
        state = self.active.get(req.rid)
        if state is not None:
            return state
        try:
            spec = RequestSpec.from_sampling_params(req.sampling_params)
        except (ValueError, KeyError, TypeError) as e:
            spec, error = RequestSpec(0, ()), f"malformed qrhead spec: {e}"
        else:
            error = None
        if spec is None:
            return None                                # an ordinary request
        num_prompt = len(req.origin_input_ids)
        state = _Request(SpanCapture(spec.span_start, num_prompt, self._layers(spec)),
                         weakref.ref(req))
        state.capture.error = error or self._spec_error(spec, num_prompt)
        self.active[req.rid] = state
        return state

    def _layers(self, spec: RequestSpec) -> dict:
        try:
            return layer_heads(spec.heads, self.num_heads, self.num_kv_heads)
        except (ValueError, IndexError, KeyError, ZeroDivisionError):
            return {}

    def _spec_error(self, spec: RequestSpec, num_prompt: int) -> str | None:
        if not 0 <= spec.span_start < num_prompt:
            return f"span_start {spec.span_start} outside the prompt ({num_prompt} tokens)"
        bad = [h for h in spec.heads if not (0 <= h[0] < self.num_layers
                                             and 0 <= h[1] < self.num_heads)]
        if bad or not spec.heads:
            return (f"heads {bad or '[]'} do not exist in this model ({self.num_layers} layers "
                    f"x {self.num_heads} heads)")
        return None

    # --- per layer (called by the RadixAttention wrapper) -----------------------------------
    def on_attention(self, layer, q, k) -> None:
        """Add this step's query-span rows of every scoring request that reads ``layer``."""
        if not self._plan:
            return                                    # ordinary requests only: nothing to do
        for row in self._plan:
            cap = row.state.capture
            if layer.layer_id in cap.layers and cap.error is None:
                start = time.perf_counter()
                try:
                    self._capture(row, layer, q, k)
                except Exception as e:  # never crash the engine for one request
                    logger.exception("qrhead capture failed on layer %s", layer.layer_id)
                    cap.error = f"{type(e).__name__}: {e}"
                row.state.seconds += time.perf_counter() - start

    def _capture(self, row: _Row, layer, q, k) -> None:
        from sglang.srt.model_executor.forward_context import (get_req_to_token_pool,
                                                                get_token_to_kv_pool)
        cap = row.state.capture
        offset, count = cap.span_slice()
        first = row.token_offset + offset             # span rows in the flattened step
        hi = cap.step_end                             # tokens of the sequence in the pool
        key_buffer = get_token_to_kv_pool().get_key_buffer(layer.layer_id)   # [slots, Hkv, D]
        block_table = get_req_to_token_pool().req_to_token[row.pool_row]
        keys = gather_paged_keys(key_buffer.unsqueeze(1), block_table, hi)    # [Hkv, hi, D]
        query = q.view(-1, layer.tp_q_head_num, layer.qk_head_dim)[first:first + count]
        if not row.state.checked_step and k is not None:
            # The span rows' keys read back from the pool must be the keys the layer just wrote
            # (evaluated once the request finishes: no host sync here).
            written = k.reshape(-1, layer.tp_k_head_num, layer.qk_head_dim)[first:first + count]
            cap.check_keys(keys[:, hi - count:hi].transpose(0, 1), written)
            row.state.checked_step = True
        cap.add_layer(layer.layer_id, query, keys, layer.scaling, sliding_window_of(layer))


def sliding_window_of(layer) -> int | None:
    """Window in tokens (a row at p sees p-W+1..p): SGLang stores W-1, -1 for full attention."""
    w = getattr(layer, "sliding_window_size", -1)
    return None if w is None or w < 0 else int(w) + 1


STORE = CaptureStore()
