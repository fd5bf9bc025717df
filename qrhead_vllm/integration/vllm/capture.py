"""Per-request capture of selected-head attention rows during prefill, in one vLLM worker.

The attention wrapper (``qrhead_vllm.patches``) calls :meth:`CaptureStore.on_attention` after the
backend has written this step's keys to the paged cache. For each scoring request in the batch
whose *query span* intersects the tokens of this step, we take the queries of the span
positions (post-RoPE, this rank's selected heads), gather the keys of the whole sequence through
the block table and hand both to the request's :class:`~qrhead_vllm.core.SpanCapture`. When the
step holds the last prompt token the capture becomes a result, kept until the client pops it
(LRU-bounded). Layers are identified by the index vLLM binds their KV cache by
(``extract_layer_index`` of the layer name), read once when the KV caches are initialised.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass

from qrhead_vllm.core import SpanCapture, beyond_last_layer, gather_paged_keys, layer_heads
from qrhead_vllm.integration.vllm.kv_layout import KeyView, sliding_window_of
from qrhead_vllm.integration.vllm.layer_cut import last_layer_of
from qrhead_vllm.integration.vllm.request_spec import RequestSpec

logger = logging.getLogger(__name__)
MAX_DONE = 4096  # finished results kept for clients that never pop (oldest dropped first)


@dataclass
class _Request:
    spec: RequestSpec
    capture: SpanCapture
    seconds: float = 0.0        # host time spent capturing (a metric, not a measurement)
    checked_step: bool = False  # the KV self-check runs on the first captured layer of a step


@dataclass(frozen=True)
class _Row:
    """One scoring request's slice of this step's flattened batch."""

    row: int             # row in the batch (block_table / query_start_loc index)
    token_offset: int    # first token of this request in the flattened step
    req: _Request


class CaptureStore:
    """All capture state of one worker process, keyed by request (never a bare global buffer)."""

    def __init__(self):
        self.active: dict[str, _Request] = {}               # vLLM req id -> capture
        self.done: OrderedDict[str, dict] = OrderedDict()   # our key -> result
        # model runner -> {layer name -> (index, key view)}: per runner, so two engines in one
        # process (in-process engine cores, e.g. a full and a score-only one) never mix layers
        self._layers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._plan: list[_Row] | None = None
        self._runner = None
        self._scheduled: dict[str, int] = {}

    def set_layers(self, runner, layers: dict[str, tuple[int, KeyView]]) -> None:
        """A model runner's attention layers (name -> vLLM's layer index and the key view its
        start-up probe verified), set when its KV caches are bound."""
        self._layers[runner] = dict(layers)

    def layers_of(self, runner) -> dict[str, tuple[int, KeyView]]:
        return self._layers.get(runner, {})

    # --- step boundaries (called by the model-runner wrapper) ---------------------------
    def begin_step(self, runner, scheduler_output) -> None:
        for req_id in scheduler_output.finished_req_ids:   # finished or aborted
            self.active.pop(req_id, None)
        self._runner, self._plan = runner, None
        self._scheduled = scheduler_output.num_scheduled_tokens

    def end_step(self) -> None:
        for row in self._plan or ():
            if row.req.capture.end_step():
                self._finish(row.req)
        while len(self.done) > MAX_DONE:
            self.done.popitem(last=False)
        self._plan, self._runner = None, None

    def _finish(self, req: _Request) -> None:
        res = req.capture.result()
        self.done[req.spec.key] = {"index": res.index, "rows": res.rows, "error": res.error,
                                   "capture_s": req.seconds}
        self.done.move_to_end(req.spec.key)
        self.active = {k: r for k, r in self.active.items() if r is not req}

    def pop(self, keys: list[str]) -> dict[str, dict]:
        return {k: self.done.pop(k) for k in keys if k in self.done}

    def stats(self) -> dict[str, int]:
        return {"active": len(self.active), "done": len(self.done)}

    # --- per layer (called by the attention-backend wrapper) ----------------------------
    def on_attention(self, impl, layer, query, key, kv_cache, attn_metadata) -> None:
        """Add this step's query-span rows of every scoring request to its capture."""
        if self._runner is None or attn_metadata is None:
            return                                  # warm-up / profiling, not a real step
        if self._plan is None:
            self._plan = self._build_plan()
        if not self._plan:
            return                                  # ordinary requests only: nothing to do
        layer_idx, view = self.layers_of(self._runner).get(layer.layer_name, (None, None))
        for row in self._plan:
            cap = row.req.capture
            if layer_idx in cap.layers and cap.error is None:
                start = time.perf_counter()
                try:
                    self._capture(row, layer_idx, view, impl, query, key, kv_cache,
                                  attn_metadata)
                except Exception as e:  # never crash the engine for one request
                    logger.exception("qrhead capture failed on layer %s", layer_idx)
                    cap.error = f"{type(e).__name__}: {e}"
                row.req.seconds += time.perf_counter() - start

    def _capture(self, row: _Row, layer_idx, view, impl, query, key, kv_cache, meta) -> None:
        cap = row.req.capture
        offset, count = cap.span_slice()
        first = row.token_offset + offset           # span rows in the flattened step
        hi = cap.step_end                           # tokens of the sequence in the cache
        keys = gather_paged_keys(view(kv_cache), meta.block_table[row.row], hi)
        if not row.req.checked_step and key is not None:
            # Keys of this step's span rows, read back through our layout view, must be the
            # keys the layer just wrote (evaluated once the request finishes: no host sync).
            cap.check_keys(keys[:, hi - count:hi].transpose(0, 1), key[first:first + count])
            row.req.checked_step = True
        cap.add_layer(layer_idx, query[first:first + count], keys, impl.scale,
                      sliding_window_of(impl))

    # --- step plan: which rows of this batch are scoring requests -----------------------
    def _build_plan(self) -> list[_Row]:
        runner, plan, offset = self._runner, [], 0
        batch, scheduled = runner.input_batch, self._scheduled
        for r, req_id in enumerate(batch.req_ids[: batch.num_reqs]):
            n = scheduled.get(req_id, 0)
            req = self.active.get(req_id) or self._start(req_id, runner)
            first = int(batch.num_computed_tokens_cpu[r])
            if req is not None and req.capture.begin_step(first, n):
                req.checked_step = False
                plan.append(_Row(r, offset, req))
            offset += n
        return plan

    def _start(self, req_id: str, runner) -> _Request | None:
        state = runner.requests.get(req_id)
        spec = RequestSpec.from_sampling_params(getattr(state, "sampling_params", None))
        if spec is None:
            return None
        req = _Request(spec, SpanCapture(spec.span_start, state.num_prompt_tokens,
                                         self._local_layers(spec, runner)))
        if not 0 <= spec.span_start < state.num_prompt_tokens:
            req.capture.error = f"span_start {spec.span_start} outside the prompt"
        known = {index for index, _ in self.layers_of(runner).values()}
        absent = sorted(set(req.capture.layers) - known)
        if absent and req.capture.error is None:
            req.capture.error = (
                beyond_last_layer(spec.heads, last_layer_of(runner.vllm_config))
                or f"layers {absent} hold requested heads but this worker has no such attention "
                   f"layer (it has {len(known)})")
        self.active[req_id] = req
        return req

    def _local_layers(self, spec: RequestSpec, runner) -> dict:
        """This rank's share of the request's heads, grouped by layer."""
        from vllm.distributed import (get_tensor_model_parallel_rank,
                                      get_tensor_model_parallel_world_size)
        cfg = runner.model_config
        return layer_heads(spec.heads, cfg.model_arch_config.total_num_attention_heads,
                           cfg.get_total_num_kv_heads(), get_tensor_model_parallel_world_size(),
                           get_tensor_model_parallel_rank())


STORE = CaptureStore()
