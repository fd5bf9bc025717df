"""Per-request capture of selected-head attention rows during prefill, in one worker process.

The attention wrapper (see ``qrhead_vllm.patches``) calls :meth:`CaptureStore.on_attention`
after the backend has written this step's keys to the paged cache and computed attention. For
each scoring request in the batch whose *query span* intersects the tokens of this step, we take
the queries of the span positions (post-RoPE, this rank's selected heads), gather the keys of
the whole sequence through the block table, and add the softmax rows to the request's
accumulator. Rows of a span split across prefill chunks simply add up; positions before the
span (earlier chunks, prefix-cache hits) are never needed. When the step holds the last prompt
token the accumulator becomes a result, kept until the client pops it (LRU-bounded).
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from qrhead_vllm.core import gather_paged_keys, shard_heads, span_attention_rows
from qrhead_vllm.integration.vllm.kv_layout import key_view_for, keys_match, sliding_window_of
from qrhead_vllm.integration.vllm.request_spec import RequestSpec

logger = logging.getLogger(__name__)
MAX_DONE = 4096  # finished results kept for clients that never pop (oldest dropped first)


@dataclass
class _Accumulator:
    """Row sums of one request's query span, per captured layer of this rank."""

    spec: RequestSpec
    num_prompt_tokens: int
    layers: dict[int, tuple[list[int], torch.Tensor, torch.Tensor]]  # layer -> (idx, q, kv)
    rows: dict[int, torch.Tensor] = field(default_factory=dict)
    covered: int = 0            # span positions < covered are already in ``rows``
    error: str | None = None

    def result(self) -> dict:
        n_q = self.num_prompt_tokens - self.spec.span_start
        index = [i for idx, _, _ in self.layers.values() for i in idx]
        mats = [self.rows.get(l, torch.zeros(len(v[0]), self.num_prompt_tokens))
                for l, v in self.layers.items()]
        rows = torch.cat(mats) / n_q if mats else torch.zeros(0, self.num_prompt_tokens)
        return {"index": index, "rows": rows, "error": self.error}


@dataclass(frozen=True)
class _Row:
    """One scoring request's slice of this step's flattened batch."""

    row: int             # row in the batch (block_table / query_start_loc index)
    token_offset: int    # first token of this request in the flattened step
    first_pos: int       # absolute position of that token
    num_tokens: int      # tokens of this request in this step
    acc: _Accumulator


class CaptureStore:
    """All capture state of one worker process, keyed by request (never a bare global buffer)."""

    def __init__(self):
        self.active: dict[str, _Accumulator] = {}           # vLLM req id -> accumulator
        self.done: OrderedDict[str, dict] = OrderedDict()   # our key -> result
        self._plan: list[_Row] | None = None
        self._runner = None
        self._layer_index: dict[int, int] = {}
        self._scheduled: dict[str, int] = {}

    # --- step boundaries (called by the model-runner wrapper) ---------------------------
    def begin_step(self, runner, scheduler_output) -> None:
        for req_id in scheduler_output.finished_req_ids:   # finished or aborted
            self.active.pop(req_id, None)
        self._runner, self._plan = runner, None
        self._scheduled = scheduler_output.num_scheduled_tokens

    def end_step(self) -> None:
        for row in self._plan or ():
            acc = row.acc
            if row.first_pos + row.num_tokens >= acc.num_prompt_tokens:
                self.done[acc.spec.key] = acc.result()
                self.done.move_to_end(acc.spec.key)
                self.active = {k: a for k, a in self.active.items() if a is not acc}
        while len(self.done) > MAX_DONE:
            self.done.popitem(last=False)
        self._plan, self._runner = None, None

    def pop(self, keys: list[str]) -> dict[str, dict]:
        return {k: self.done.pop(k) for k in keys if k in self.done}

    def stats(self) -> dict[str, int]:
        return {"active": len(self.active), "done": len(self.done)}

    # --- per layer (called by the attention-backend wrapper) ----------------------------
    def on_attention(self, impl, layer, query, key, kv_cache, attn_metadata) -> None:
        """Add this step's query-span rows of every scoring request to its accumulator."""
        if self._runner is None or attn_metadata is None:
            return                                  # warm-up / profiling, not a real step
        if self._plan is None:
            self._plan = self._build_plan()
        if not self._plan:
            return                                  # ordinary requests only: nothing to do
        layer_idx = self._layer_of(layer)
        for row in self._plan:
            if layer_idx in row.acc.layers and row.acc.error is None:
                try:
                    self._capture(row, layer_idx, impl, layer, query, key, kv_cache,
                                  attn_metadata)
                except Exception as e:  # never crash the engine for one request
                    logger.exception("qrhead capture failed on layer %d", layer_idx)
                    row.acc.error = f"{type(e).__name__}: {e}"

    def _capture(self, row: _Row, layer_idx, impl, layer, query, key, kv_cache, meta) -> None:
        acc = row.acc
        index, q_heads, kv_heads = acc.layers[layer_idx]
        lo = max(acc.spec.span_start, row.first_pos)
        hi = row.first_pos + row.num_tokens
        positions = torch.arange(lo, hi)
        tokens = (positions - row.first_pos + row.token_offset).to(query.device)
        view = key_view_for(impl, layer)(kv_cache)
        block_row = meta.block_table[row.row]
        if key is not None and not keys_match(view, block_row, positions.to(view.device),
                                              key[tokens]):
            raise RuntimeError(
                f"KV-cache self-check failed on layer {layer_idx} ({type(impl).__name__}): "
                "keys read back from the paged cache differ from the keys written this step; "
                "this engine's KV layout is not supported by qrhead-vllm")
        keys = gather_paged_keys(view, block_row, hi)
        rows = span_attention_rows(query[tokens][:, q_heads.to(query.device)], keys, positions,
                                   kv_heads.to(keys.device), impl.scale,
                                   sliding_window_of(impl))
        if layer_idx not in acc.rows:
            acc.rows[layer_idx] = torch.zeros(len(index), acc.num_prompt_tokens)
        acc.rows[layer_idx][:, :hi] += rows.cpu()

    def _layer_of(self, layer) -> int:
        key = id(layer)
        if key not in self._layer_index:
            match = re.search(r"layers\.(\d+)\.", layer.layer_name)
            self._layer_index[key] = int(match.group(1)) if match else -1
        return self._layer_index[key]

    # --- step plan: which rows of this batch are scoring requests -----------------------
    def _build_plan(self) -> list[_Row]:
        runner, plan, offset = self._runner, [], 0
        batch, scheduled = runner.input_batch, self._scheduled
        for r, req_id in enumerate(batch.req_ids[: batch.num_reqs]):
            n = scheduled.get(req_id, 0)
            acc = self.active.get(req_id) or self._start(req_id, runner)
            first = int(batch.num_computed_tokens_cpu[r])
            if acc is not None and first < acc.num_prompt_tokens \
                    and first + n > acc.spec.span_start:
                if first < acc.covered:             # preempted and recomputed: start over
                    acc.rows, acc.covered = {}, 0
                acc.covered = first + n
                plan.append(_Row(r, offset, first, n, acc))
            offset += n
        return plan

    def _start(self, req_id: str, runner) -> _Accumulator | None:
        state = runner.requests.get(req_id)
        spec = RequestSpec.from_sampling_params(getattr(state, "sampling_params", None))
        if spec is None:
            return None
        acc = _Accumulator(spec, state.num_prompt_tokens, self._local_layers(spec, runner))
        if not 0 <= spec.span_start < state.num_prompt_tokens:
            acc.error = f"span_start {spec.span_start} outside the prompt"
        self.active[req_id] = acc
        return acc

    def _local_layers(self, spec: RequestSpec, runner) -> dict:
        """This rank's share of the request's heads, grouped by layer."""
        from vllm.distributed import (get_tensor_model_parallel_rank,
                                      get_tensor_model_parallel_world_size)
        cfg = runner.model_config
        mine = shard_heads(spec.heads, cfg.model_arch_config.total_num_attention_heads,
                           cfg.get_total_num_kv_heads(), get_tensor_model_parallel_world_size()
                           )[get_tensor_model_parallel_rank()]
        layers: dict[int, tuple[list[int], list[int], list[int]]] = {}
        for h in mine:
            idx, q, kv = layers.setdefault(h.layer, ([], [], []))
            idx.append(h.index), q.append(h.local_head), kv.append(h.local_kv_head)
        return {l: (idx, torch.tensor(q), torch.tensor(kv)) for l, (idx, q, kv) in layers.items()}


STORE = CaptureStore()
