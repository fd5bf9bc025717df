"""vLLM's side of the capture: its step metadata for the core driver, its results kept for
``collective_rpc("qrhead_pop")``.

The patches (``qrhead_vllm.patches.vllm_0_NN``) call :meth:`VLLMCapture.begin_step` /
:meth:`end_step` around ``execute_model`` and :meth:`on_attention` after each attention
backend call (this step's keys are in the paged cache by then). What is vLLM's here: a batch
row's request id, computed and scheduled tokens (``input_batch``, ``scheduler_output``), the
spec in ``SamplingParams.extra_args``, the layer index vLLM binds a KV cache by
(``extract_layer_index``), the block table of the attention metadata, the key view its start-up
probe verified, and the results, kept under the spec's key until a client pops them
(LRU-bounded). Everything else is :class:`~qrhead_vllm.core.driver.CaptureDriver`'s.

A generating request whose spec has ``doc_spans`` stays in the driver's table while it decodes
(its decode rows deferred and computed in bulk, see ``core.capture.DecodeCapture``: the
``begin_step`` hook, which runs before vLLM's forward and batch update, computes those of every
request the step does not run); its decode-time result goes under ``decode_key(key)`` when the
worker learns that it ended (the next step's ``finished_req_ids``), or is taken as it stands
when a client pops that key first:
a client pops once it has the request's final output, by then every step that emitted one of
its tokens has run (a step after it, e.g. under async scheduling, only adds rows past the last
token, which the client cuts off).
"""

from __future__ import annotations

import weakref
from collections import OrderedDict

from qrhead_vllm.core.driver import CaptureDriver, LayerInput, ModelShape, StepRow
from qrhead_vllm.integration.request_spec import decode_key, encode_result, read_spec
from qrhead_vllm.integration.vllm.kv_layout import KeyView, sliding_window_of
from qrhead_vllm.integration.vllm.layer_cut import last_layer_of

MAX_DONE = 4096  # finished results kept for clients that never pop (oldest dropped first)
MAX_ABANDONED = 4096   # keys a client gave up on before their result existed (a few bytes each)
MAX_SKIPPED = 65536    # request ids known to need nothing (re-checked, cheaply, once dropped)


class VLLMCapture:
    """The capture adapter of one vLLM worker process."""

    def __init__(self):
        self.driver = CaptureDriver()
        self.done: OrderedDict[str, dict] = OrderedDict()   # spec key -> result payload
        # Keys popped before their result existed: the client gave up (cancelled, refused by
        # vLLM, disconnected) while the worker still computed the request's last step; its
        # result arrives after the pop and would otherwise sit in `done` until MAX_DONE newer
        # results pushed it out (a whole payload per cancelled request).
        self.abandoned: OrderedDict[str, None] = OrderedDict()
        # model runner -> ({layer name -> (index, key view)}, shape): per runner, so two
        # engines in one process (in-process engine cores) never mix layers
        self._runners: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._runner = None
        self._planned = False
        self._scheduled: dict[str, int] = {}
        # Running requests that need nothing from us (ordinary ones, scoring ones whose capture
        # is over): each step skips them with one set lookup, without reading their params.
        self._skipped: set[str] = set()
        self._decoding: dict[str, str] = {}   # decode_key(spec key) -> request id, in the table

    def set_layers(self, runner, layers: dict[str, tuple[int, KeyView]]) -> None:
        """A model runner's attention layers (name -> vLLM's layer index and the key view its
        start-up probe verified), set when its KV caches are bound."""
        from vllm.distributed import (get_tensor_model_parallel_rank,
                                      get_tensor_model_parallel_world_size)
        cfg = runner.model_config
        shape = ModelShape(cfg.model_arch_config.total_num_attention_heads,
                           cfg.get_total_num_kv_heads(), cfg.get_total_num_hidden_layers(),
                           get_tensor_model_parallel_world_size(),
                           get_tensor_model_parallel_rank(),
                           frozenset(index for index, _ in layers.values()),
                           last_layer_of(runner.vllm_config))
        self._runners[runner] = (dict(layers), shape)

    def layers_of(self, runner) -> dict[str, tuple[int, KeyView]]:
        return self._runners.get(runner, ({}, None))[0]

    # --- step boundaries (the model-runner wrapper) -------------------------------------
    def begin_step(self, runner, scheduler_output) -> None:
        # Before this step's forward (and before vLLM re-lays its batch): requests it does not
        # run may lose their blocks in it, so their deferred decode rows are computed now.
        self.driver.flush_unscheduled(scheduler_output.num_scheduled_tokens)
        ended = scheduler_output.finished_req_ids                # finished or aborted
        if ended:
            self._skipped.difference_update(ended)
            for req in self.driver.finish(ended):
                self._decoding.pop(decode_key(req.key), None)
                if req.decode_ready:
                    self._keep(decode_key(req.key), encode_result(req, decode=True))
        self._runner, self._planned = runner, False
        self._scheduled = scheduler_output.num_scheduled_tokens

    def end_step(self) -> None:
        for req in self.driver.end_step():
            self._keep(req.key, encode_result(req))
            if req.decode is None:
                self._skip(req.request_id)
        self._runner = None

    def _keep(self, key: str, payload: dict) -> None:
        """Hold a result for its client, unless the client already gave up on it."""
        if key in self.abandoned:         # its client already gave up on it (see __init__)
            del self.abandoned[key]
            return
        self.done[key] = payload
        self.done.move_to_end(key)
        _bound(self.done, MAX_DONE)

    def _skip(self, request_id: str) -> None:
        if len(self._skipped) >= MAX_SKIPPED:   # ids whose end we never saw: start afresh
            self._skipped.clear()
        self._skipped.add(request_id)

    def pop(self, keys: list[str]) -> dict[str, dict]:
        """The results of ``keys``; a decode-time key of a request still in the table is
        taken as it stands (its capture ends there); a key without a result yet is
        remembered as abandoned, so its result is dropped when it comes (a client pops only
        once its request ended)."""
        found = {k: self.done.pop(k) for k in keys if k in self.done}
        for k in keys:
            req = self.driver.requests.pop(self._decoding.pop(k, None), None)
            if req is not None and k not in found:
                found[k] = encode_result(req, decode=True)
                self._skip(req.request_id)
        self.abandoned.update((k, None) for k in keys if k not in found)
        _bound(self.abandoned, MAX_ABANDONED)
        return found

    def peek(self, keys: list[str]) -> dict[str, dict]:
        """The decode-time rows so far of requests still decoding (``decode_key`` keys), left
        in place: streamed citations read them as sentences close. Between steps, so the
        deferred rows computed here read intact blocks."""
        found = {k: self.done[k] for k in keys if k in self.done}
        for k in keys:
            req = self.driver.requests.get(self._decoding.get(k))
            if req is not None and k not in found:
                found[k] = encode_result(req, decode=True)
        return found

    def stats(self) -> dict[str, int]:
        """Scoring requests in the driver's table (generating ones with decode-time capture
        until they end) and results no client has taken yet."""
        return {"active": len(self.driver.requests), "done": len(self.done)}

    # --- per layer (the attention-backend wrapper) --------------------------------------
    def on_attention(self, impl, layer, query, key, kv_cache, attn_metadata) -> None:
        if self._runner is None or attn_metadata is None:
            return                                  # warm-up / profiling, not a real step
        if not self._planned:
            self.driver.begin_step(self._rows())
            self._planned = True
        if not self.driver.capturing:
            return                                  # ordinary requests only: nothing to do
        index, view = self.layers_of(self._runner).get(layer.layer_name, (None, None))
        if index is None or not self.driver.reads(index):
            return
        self.driver.on_layer(LayerInput(index, query, key, view(kv_cache),
                                        attn_metadata.block_table, impl.scale,
                                        sliding_window_of(impl)))

    def _rows(self):
        """This step's scoring rows, admitting requests seen for the first time."""
        batch, offset = self._runner.input_batch, 0
        for r, req_id in enumerate(batch.req_ids[: batch.num_reqs]):
            n = self._scheduled.get(req_id, 0)
            if req_id in self._skipped:
                pass
            elif req_id in self.driver.requests or self._admit(req_id):
                yield StepRow(req_id, int(batch.num_computed_tokens_cpu[r]), n, offset, r)
            else:
                self._skip(req_id)
            offset += n

    def _admit(self, req_id: str) -> bool:
        state = self._runner.requests.get(req_id)
        params = getattr(getattr(state, "sampling_params", None), "extra_args", None)
        spec, error = read_spec(params)
        if spec is None and error is None:
            return False                            # an ordinary request
        _, shape = self._runners.get(self._runner, ({}, None))
        if shape is None:       # initialize_kv_cache never ran through our wrapper
            error = error or "this worker's attention layers were never verified by qrhead-vllm"
        tracked = self.driver.admit(req_id, spec, state.num_prompt_tokens, shape, error)
        if tracked.decode is not None:
            self._decoding[decode_key(tracked.key)] = req_id
        return True


def _bound(table: OrderedDict, size: int) -> None:
    """Drop the oldest entries past ``size``."""
    while len(table) > size:
        table.popitem(last=False)


STORE = VLLMCapture()
