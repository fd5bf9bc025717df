"""The capture driver: every engine's scoring requests, step by step, layer by layer.

One driver per engine process serves every engine integration (LMCache's shape: the engine is
neutral, each ``integration/<engine>/`` adapter only translates its engine's metadata). Per
forward step the adapter tells the driver

* which rows of the flattened batch are scoring requests (:class:`StepRow`: request id, first
  prompt position and token count of the step, token offset in the batch, block-table row),
  after :meth:`CaptureDriver.admit`-ting requests it sees for the first time;
* for each attention layer, once the layer has written this step's keys, the layer's
  :class:`LayerInput` (queries, the keys it wrote, the paged key cache as
  ``[num_blocks, block_size, H_kv, D]``, the block table, scale, sliding window);
* when the step ends; the driver then returns the requests whose last prompt token it held,
  and the adapter delivers their results its own way;
* when requests end (:meth:`CaptureDriver.finish`): those with decode-time capture
  (``spec.doc_spans``) stay in the table through their decode steps and are returned then, for
  their per-token span mass to be delivered; the others left the table with their prefill.

The driver owns the request table, the validation of a request against the model (one set of
rules for every engine), the per-layer loop, the paged key gather, the once-per-step key
self-check, the errors (one request's failure never crashes the engine, and never becomes a
wrong score: it is the request's result) and the capture time of each request.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Container, Iterable, Protocol

import torch

from qrhead_vllm.core.attention import gather_paged_keys, paged_span_mass
from qrhead_vllm.core.capture import (CaptureResult, DecodeCapture, LayerHeads, PagedKeys,
                                      SpanCapture, layer_heads)
from qrhead_vllm.core.heads import Head, beyond_last_layer

logger = logging.getLogger(__name__)


class CaptureSpec(Protocol):
    """What a scoring request asks for (``integration.request_spec.RequestSpec``)."""

    span_start: int                 # first prompt token of the query span (runs to the end)
    heads: tuple[Head, ...]         # global (layer, query head)
    doc_spans: tuple[tuple[int, int], ...]   # decode-time capture over these spans; () = off


@dataclass(frozen=True)
class ModelShape:
    """What a request is validated against: the whole model's head counts and depth, this
    worker's tensor-parallel place, the attention layers it holds (None: all of them) and the
    cut of a score-only engine (None: the full model)."""

    num_heads: int
    num_kv_heads: int
    num_layers: int
    tp_size: int = 1
    rank: int = 0
    layers: frozenset[int] | None = None
    last_layer: int | None = None


def spec_error(spec: CaptureSpec, num_prompt_tokens: int, shape: ModelShape) -> str | None:
    """Why ``spec`` cannot be scored on this model, or None (the only request validation)."""
    if not 0 <= spec.span_start < num_prompt_tokens:
        return f"span_start {spec.span_start} outside the prompt ({num_prompt_tokens} tokens)"
    bad = [h for h in spec.heads if not (0 <= h[0] < shape.num_layers
                                         and 0 <= h[1] < shape.num_heads)]
    if bad or not spec.heads:
        return (f"heads {bad or '[]'} do not exist in this model ({shape.num_layers} layers "
                f"x {shape.num_heads} heads)")
    bad_spans = [s for s in spec.doc_spans if not 0 <= s[0] < s[1] <= num_prompt_tokens]
    if bad_spans:
        return (f"doc_spans {bad_spans[:3]} are not non-empty [start, end) ranges inside the "
                f"prompt ({num_prompt_tokens} tokens)")
    beyond = beyond_last_layer(spec.heads, shape.last_layer)
    if beyond is not None:
        return beyond
    if shape.layers is None:
        return None
    absent = sorted({layer for layer, _ in spec.heads} - shape.layers)
    if absent:
        return (f"layers {absent} hold requested heads but this worker has no such attention "
                f"layer (it has {len(shape.layers)})")
    return None


@dataclass
class Tracked:
    """One scoring request in the driver's table."""

    request_id: str
    spec: CaptureSpec | None          # None: a spec that could not be read (see capture.error)
    capture: SpanCapture
    handle: Any = None                # whatever the adapter needs to deliver the result
    seconds: float = 0.0              # host time spent capturing (a metric, not a measurement)
    checked_step: bool = False        # the key self-check runs on the first layer of a step
    decode: DecodeCapture | None = None   # decode-time capture, when the spec asks for it
    prefill_done: bool = False        # the prefill result was handed out

    def result(self) -> CaptureResult:
        return self.capture.result()

    def decode_result(self) -> CaptureResult:
        return self.decode.result()

    @property
    def decode_ready(self) -> bool:
        """Whether a decode-time result is due (it captures while decoding, past its prefill)."""
        return self.decode is not None and self.prefill_done

    @property
    def key(self) -> str:
        """What its results are kept under: the spec's key, else the engine's request id."""
        return (self.spec.key if self.spec is not None else None) or self.request_id


@dataclass(frozen=True)
class StepRow:
    """One scoring request's slice of this step's flattened batch, from the engine's metadata."""

    request_id: str
    first_pos: int       # prompt position of its first token in the step (tokens computed before)
    num_tokens: int      # its tokens in the step
    token_offset: int    # its first token in the step's flattened query / key
    table_row: int       # its row of the block table (vLLM batch row, SGLang req_to_token row)


@dataclass(frozen=True)
class LayerInput:
    """One attention layer's tensors for this step, as the adapter reads them."""

    layer: int                  # the index heads are addressed by
    query: torch.Tensor         # [N, H_local, D] post-RoPE, the whole flattened step
    key: torch.Tensor | None    # [N, H_kv_local, D] keys it wrote this step (self-check)
    key_cache: torch.Tensor     # [num_blocks, block_size, H_kv_local, D] (a view is fine)
    block_table: torch.Tensor   # [rows, max_blocks] physical block ids
    scale: float
    sliding_window: int | None = None


@dataclass(frozen=True)
class _Planned:
    row: StepRow
    req: Tracked
    prefill: bool      # the step computes query-span rows
    decode: bool       # the step computes decode-time rows


FLUSH_ROWS = 64   # deferred decode rows of a request computed together (see DecodeCapture)


@dataclass
class _DecodeBatch:
    """This step's one-token decode rows of the requests that read the same heads. Per layer
    they cost two index ops and Python bookkeeping: the rows are deferred (``DecodeCapture
    .defer``) and computed every FLUSH_ROWS steps, a gather and a matmul per layer for all of
    them (rows of sliding-window layers are computed at once: the engine may free blocks that
    leave the window)."""

    planned: list[_Planned]
    layers: dict[int, LayerHeads]
    checked: bool = False                                   # the key self-check ran this step
    _offsets: dict = field(default_factory=dict)            # device -> token offsets

    def offsets(self, device: torch.device) -> torch.Tensor:
        if device not in self._offsets:
            self._offsets[device] = torch.tensor([p.row.token_offset for p in self.planned],
                                                 device=device)
        return self._offsets[device]


@dataclass
class CaptureDriver:
    """All capture state of one engine process, keyed by the engine's request id."""

    requests: dict[str, Tracked] = field(default_factory=dict)
    _plan: list[_Planned] | None = None
    _batches: list[_DecodeBatch] = field(default_factory=list)   # this step's decode rows
    _layers: set[int] = field(default_factory=set)    # layers this step's requests read
    _ending: list[Tracked] = field(default_factory=list)   # failed requests ending this step

    # --- the request table ------------------------------------------------------------------
    def admit(self, request_id: str, spec: CaptureSpec | None, num_prompt_tokens: int,
              shape: ModelShape | None, error: str | None = None, handle: Any = None
              ) -> Tracked:
        """Start tracking a scoring request (``error``: why it cannot be captured, e.g. a spec
        that could not be read; ``shape`` may then be None)."""
        error = error or (spec_error(spec, num_prompt_tokens, shape) if spec else
                          "no qrhead spec")
        layers = {} if error else layer_heads(spec.heads, shape.num_heads, shape.num_kv_heads,
                                              shape.tp_size, shape.rank)
        capture = SpanCapture(spec.span_start if spec else 0, num_prompt_tokens, layers)
        capture.error = error
        decode = None
        if spec is not None and spec.doc_spans:
            decode = DecodeCapture(num_prompt_tokens - 1, layers, tuple(spec.doc_spans),
                                   num_prompt_tokens, error=error)
        tracked = self.requests[request_id] = Tracked(request_id, spec, capture, handle,
                                                      decode=decode)
        return tracked

    def forget(self, request_ids: Iterable[str]) -> None:
        """Drop requests that ended (finished or aborted) before their last prompt token."""
        for request_id in request_ids:
            self.requests.pop(request_id, None)

    def finish(self, request_ids: Iterable[str]) -> list[Tracked]:
        """Take requests that ended (finished or aborted: engines do not tell which) out of
        the table; returns them (:attr:`Tracked.decode_ready`: a result to deliver)."""
        ended = (self.requests.pop(r, None) for r in request_ids)
        return [t for t in ended if t is not None]

    # --- step boundaries --------------------------------------------------------------------
    def begin_step(self, rows: Iterable[StepRow]) -> None:
        """Open the step of every admitted request among ``rows``."""
        plan, self._ending = [], []
        for row in rows:
            req = self.requests.get(row.request_id)
            if req is None:
                continue
            prefill = not req.prefill_done and self._prefill_step(req, row)
            dec = req.decode
            decode = (dec is not None and dec.error is None
                      and dec.begin_step(row.first_pos, row.num_tokens))
            if prefill or decode:
                req.checked_step = False
                plan.append(_Planned(row, req, prefill, decode))
        self._plan, self._batches = self._batch_decode_rows(plan)
        self._layers = {layer for p in plan for layer in p.req.capture.layers}

    @staticmethod
    def _batch_decode_rows(plan: list[_Planned]) -> tuple[list[_Planned], list[_DecodeBatch]]:
        """Plain decode rows (one token, no prefill part) go into one batch per head set; the
        rest (prefill chunks, the step with the prompt's last token, recomputed slices) are
        captured request by request, after their deferred rows (keys still intact: this runs
        before the step's forward)."""
        single, groups = [], {}
        for p in plan:
            if p.decode and not p.prefill and p.row.num_tokens == 1:
                p.req.decode.defer_step()
                groups.setdefault(tuple(p.req.spec.heads), []).append(p)
            else:
                if p.decode:
                    p.req.decode.flush()
                single.append(p)
        return single, [_DecodeBatch(ps, ps[0].req.decode.layers) for ps in groups.values()]

    def flush_unscheduled(self, scheduled: Container[str]) -> None:
        """Compute the deferred rows of every request not in ``scheduled`` (finished, aborted,
        preempted or waiting): call it before the step's forward, while their blocks still
        hold their keys (the engine may hand them to other requests in this step)."""
        for req in self.requests.values():
            if req.decode is not None and req.decode.pending and req.request_id not in scheduled:
                req.decode.flush()

    def _prefill_step(self, req: Tracked, row: StepRow) -> bool:
        """Whether this step computes query-span rows of ``req`` (a failed request is reported
        at its last prompt token instead)."""
        cap = req.capture
        if cap.error is None:
            return cap.begin_step(row.first_pos, row.num_tokens)
        if row.first_pos + row.num_tokens >= cap.num_prompt_tokens:
            self._ending.append(req)
        return False

    @property
    def capturing(self) -> bool:
        """Whether any request of the open step wants layers (the adapter's fast exit)."""
        return bool(self._plan) or bool(self._batches)

    def reads(self, layer: int) -> bool:
        """Whether a request of the open step reads ``layer`` (the adapter's per-layer exit,
        before it builds the layer's input)."""
        return layer in self._layers

    def end_step(self) -> list[Tracked]:
        """Close the step; the requests whose prefill result it finished. They leave the table,
        unless they capture while decoding too (until :meth:`finish`)."""
        plan = (self._plan or []) + [p for b in self._batches for p in b.planned]
        self._plan, self._batches = None, []
        for p in plan:
            if p.decode:
                p.req.decode.end_step()
                if p.req.decode.pending >= FLUSH_ROWS:
                    p.req.decode.flush()          # after the forward: every key is in place
        done = [p.req for p in plan if p.prefill and p.req.capture.end_step()] + self._ending
        self._ending = []
        for req in done:
            req.prefill_done = True
        self.forget(req.request_id for req in done if req.decode is None)
        return done

    # --- per layer --------------------------------------------------------------------------
    def on_layer(self, inp: LayerInput) -> None:
        """Add this step's rows of every request that reads ``inp.layer``."""
        if self._batches:
            self._on_layer_batched(inp)
        for p in self._plan or ():
            parts = [cap for cap, on in ((p.req.capture, p.prefill), (p.req.decode, p.decode))
                     if on and cap.error is None and inp.layer in cap.layers]
            if not parts:
                continue
            start = time.perf_counter()
            row = p.row
            hi = row.first_pos + row.num_tokens      # tokens of the sequence in the cache
            try:
                keys = gather_paged_keys(inp.key_cache, inp.block_table[row.table_row], hi)
                for cap in parts:
                    self._capture(p, cap, inp, keys)
            except Exception as e:  # never crash the engine for one request
                logger.exception("qrhead capture failed on layer %s", inp.layer)
                for cap in parts:
                    cap.error = cap.error or f"{type(e).__name__}: {e}"
            p.req.seconds += time.perf_counter() - start

    def _on_layer_batched(self, inp: LayerInput) -> None:
        for batch in self._batches:
            heads = batch.layers.get(inp.layer)
            if heads is None:
                continue
            start = time.perf_counter()
            try:
                self._capture_batch(batch, heads, inp)
            except Exception as e:  # never crash the engine for these requests
                logger.exception("qrhead decode capture failed on layer %s", inp.layer)
                for p in batch.planned:
                    p.req.decode.error = p.req.decode.error or f"{type(e).__name__}: {e}"
            share = (time.perf_counter() - start) / len(batch.planned)
            for p in batch.planned:
                p.req.seconds += share

    @staticmethod
    def _capture_batch(batch: _DecodeBatch, heads: LayerHeads, inp: LayerInput) -> None:
        offsets = batch.offsets(inp.query.device)
        first = batch.planned[0].req.decode
        query = inp.query.index_select(0, offsets).index_select(
            1, first._heads_on(inp.layer, inp.query.device))               # [R, h, D]
        if inp.sliding_window is not None:   # now: blocks leaving the window may be freed
            for i, p in enumerate(batch.planned):
                cap = p.req.decode
                cap.put(inp.layer, paged_span_mass(
                    query[i:i + 1], inp.key_cache, inp.block_table[p.row.table_row],
                    [p.row.first_pos], heads.kv_heads, inp.scale,
                    cap.spans_on(query.device), inp.sliding_window))
            return
        written = None
        if not batch.checked and inp.key is not None:
            written, batch.checked = inp.key.index_select(0, offsets), True
        for i, p in enumerate(batch.planned):
            p.req.decode.defer(inp.layer, query, i, PagedKeys(
                inp.key_cache, inp.block_table, p.row.table_row, inp.scale), written)

    def _capture(self, p: _Planned, cap: SpanCapture | DecodeCapture, inp: LayerInput,
                 keys: torch.Tensor) -> None:
        row = p.row
        offset, count = cap.span_slice()
        first = row.token_offset + offset            # its rows in the flattened step
        lo = row.first_pos + offset                  # their first position
        if not p.req.checked_step and inp.key is not None:
            # The rows' keys read back through the cache layout must be the keys the layer
            # just wrote (evaluated once the request finishes: no host sync here).
            cap.check_keys(keys[:, lo:lo + count].transpose(0, 1), inp.key[first:first + count])
            p.req.checked_step = True
        cap.add_layer(inp.layer, inp.query[first:first + count], keys, inp.scale,
                      inp.sliding_window)
