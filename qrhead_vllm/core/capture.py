"""One scoring request's capture, engine-agnostic: vLLM's and SGLang's hooks both drive it.

An engine integration decides, per forward step, which slice of the prompt a request computes
(``begin_step``), hands each captured layer's post-RoPE queries and the sequence's keys to
``add_layer``, and closes the step (``end_step``). Rows of a query span split across prefill
chunks add up; a recomputed slice (preemption) starts the request over. Everything stays on the
device the engine computes on: the per-layer path never synchronises with the host, and the
result is copied to the CPU once, when the request finishes.

:class:`SpanCapture` holds the prefill's query-span rows (the scores); :class:`DecodeCapture`
the decode-time mass of each generated token on each document span (the citations).

Failures are loud, never a wrong score: a layer that holds requested heads but was not captured
in a step (another model naming, a skipped layer, a pipeline stage elsewhere), or keys read back
through the engine's cache layout that differ from the keys it wrote, make the result an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from qrhead_vllm.core.attention import (paged_keys_at, paged_span_mass, span_attention_rows,
                                        span_mass_rows, span_matrix)
from qrhead_vllm.core.heads import Head, shard_heads


@dataclass(frozen=True)
class LayerHeads:
    """The selected heads of one layer on one TP rank, ordered by KV head (so each KV group is
    a contiguous slice and needs no index tensor)."""

    index: tuple[int, ...]      # position of each head in the request's ordered head list
    q_heads: tuple[int, ...]    # local query head indices
    kv_heads: tuple[int, ...]   # local KV head of each


def layer_heads(heads: Sequence[Head], num_heads: int, num_kv_heads: int, tp_size: int = 1,
                rank: int = 0) -> dict[int, LayerHeads]:
    """This rank's share of a request's heads, grouped by layer (see :func:`shard_heads`)."""
    by_layer: dict[int, list] = {}
    for h in shard_heads(heads, num_heads, num_kv_heads, tp_size)[rank]:
        by_layer.setdefault(h.layer, []).append(h)
    out = {}
    for layer, hs in by_layer.items():
        hs = sorted(hs, key=lambda h: (h.local_kv_head, h.local_head))
        out[layer] = LayerHeads(tuple(h.index for h in hs), tuple(h.local_head for h in hs),
                                tuple(h.local_kv_head for h in hs))
    return out


@dataclass
class CaptureResult:
    """This rank's heads' rows (fp32, CPU), head first: ``[len(index), num_prompt_tokens]`` mean
    attention rows of a query span, or ``[len(index), G, N]`` decode-time span mass; or the
    reason there are none."""

    index: list[int]
    rows: torch.Tensor
    error: str | None = None


class _SelectedHeads:
    """What both captures share: the selected query heads of a layer as a device index, the
    deferred KV self-check, the missing-layer check of a step and the open step's bounds.
    Subclasses are dataclasses with ``layers``, ``error``, ``_step``, ``_step_layers``,
    ``_key_mismatch`` and ``_q_index``, and name their first captured position
    (``_capture_start``)."""

    def _heads_on(self, layer: int, device: torch.device) -> torch.Tensor:
        key = (layer, device)
        if key not in self._q_index:      # built once per request and device, not per step
            self._q_index[key] = torch.tensor(self.layers[layer].q_heads, device=device)
        return self._q_index[key]

    def check_keys(self, read: torch.Tensor, written: torch.Tensor) -> None:
        """Record whether keys read back through the engine's layout equal the keys it wrote
        this step; evaluated once, in ``result`` (no host sync here)."""
        self.note_key_mismatch((read != written.to(read.dtype)).any())

    def note_key_mismatch(self, bad: torch.Tensor) -> None:
        """Accumulate a self-check outcome (a 0-d bool tensor, on the device)."""
        self._key_mismatch = bad if self._key_mismatch is None else self._key_mismatch | bad

    def _check_step_layers(self, what: str) -> None:
        missing = sorted(set(self.layers) - self._step_layers)
        if missing and self.error is None:
            self.error = (f"layers {missing} hold requested heads but were not captured in the "
                          f"step that computed {what} (a layer this engine skips, names "
                          "differently or runs on another pipeline stage)")

    def _final_error(self) -> str | None:
        if self.error is None and self._key_mismatch is not None and bool(self._key_mismatch):
            self.error = ("KV-cache self-check failed: keys read back from the paged cache differ "
                          "from the keys the layer wrote; this engine's KV layout is not "
                          "supported by qrhead-vllm")
        return self.error

    @property
    def step_end(self) -> int:
        """One past the last position of the open step (the cached sequence length)."""
        first, n = self._step
        return first + n

    def span_slice(self) -> tuple[int, int]:
        """``(offset, count)`` of this step's captured rows within the request's tokens of the
        step: those from ``_capture_start`` (the query span's or the decode rows' first
        position) on."""
        first, n = self._step
        lo = max(self._capture_start, first)
        return lo - first, first + n - lo

    @property
    def index(self) -> list[int]:
        """Each result row's position in the request's ordered head list (layer order)."""
        return [i for heads in self.layers.values() for i in heads.index]


@dataclass
class SpanCapture(_SelectedHeads):
    """Query-span attention rows of one request, accumulated layer by layer, step by step."""

    span_start: int
    num_prompt_tokens: int
    layers: dict[int, LayerHeads]
    rows: dict[int, torch.Tensor] = field(default_factory=dict)   # layer -> [h, T] row sums
    covered: int = 0              # prompt positions < covered have been computed
    error: str | None = None
    _step: tuple[int, int] | None = None          # (first position, tokens) of the open step
    _step_layers: set[int] = field(default_factory=set)
    _key_mismatch: torch.Tensor | None = None     # deferred self-check, on the device
    _q_index: dict[tuple[int, torch.device], torch.Tensor] = field(default_factory=dict)

    # --- step boundaries --------------------------------------------------------------------
    def begin_step(self, first_pos: int, num_tokens: int) -> bool:
        """Open a step computing prompt positions ``[first_pos, first_pos + num_tokens)``;
        False (nothing to capture) when the slice misses the query span."""
        end = first_pos + num_tokens
        if first_pos >= self.num_prompt_tokens or end <= self.span_start:
            return False
        if first_pos < self.covered:               # preempted and recomputed: start over
            self.rows, self._key_mismatch = {}, None
        elif first_pos > max(self.covered, self.span_start) and self.error is None:
            self.error = (f"query-span positions {max(self.covered, self.span_start)}.."
                          f"{first_pos - 1} were never computed (a prefix-cache hit inside the "
                          "span: the engine's cache cap at the span start did not apply)")
        self.covered, self._step, self._step_layers = end, (first_pos, num_tokens), set()
        return True

    @property
    def _capture_start(self) -> int:
        return self.span_start

    def end_step(self) -> bool:
        """Close the step; True when it held the last prompt token (the result is ready)."""
        self._check_step_layers("the query span")
        first, n = self._step
        self._step = None
        return first + n >= self.num_prompt_tokens

    # --- per layer --------------------------------------------------------------------------
    def add_layer(self, layer: int, query: torch.Tensor, keys: torch.Tensor, scale: float,
                  sliding_window: int | None = None, key_offset: int = 0) -> None:
        """Add one layer's rows for this step.

        Args:
            query: ``[n, H_local, D]`` post-RoPE queries of this step's span rows, every local
                head (the selected ones are taken here).
            keys: ``[H_kv_local, S, D]`` keys of positions ``key_offset..key_offset+S-1``,
                covering every position a span row of this step can see.
        """
        heads = self.layers[layer]
        offset, count = self.span_slice()
        lo = self._step[0] + offset
        positions = torch.arange(lo, lo + count, device=keys.device)
        rows = span_attention_rows(query.index_select(1, self._heads_on(layer, query.device)),
                                   keys, positions, heads.kv_heads, scale, sliding_window,
                                   key_offset)
        acc = self.rows.get(layer)
        if acc is None:
            acc = self.rows[layer] = torch.zeros(len(heads.index), self.num_prompt_tokens,
                                                 dtype=torch.float32, device=rows.device)
        acc[:, key_offset:key_offset + rows.shape[1]] += rows
        self._step_layers.add(layer)

    # --- result -----------------------------------------------------------------------------
    def result(self) -> CaptureResult:
        """Rows divided by the span length, in layer order, on the CPU (one copy)."""
        index = self.index
        if self._final_error() is not None:
            return CaptureResult(index, torch.zeros(0, 0), self.error)
        if any(layer not in self.rows for layer in self.layers):
            return CaptureResult(index, torch.zeros(0, 0), "the query span was never captured")
        n_q = self.num_prompt_tokens - self.span_start
        rows = torch.cat([self.rows[layer] for layer in self.layers]) / n_q
        return CaptureResult(index, rows.cpu())


@dataclass(frozen=True)
class PagedKeys:
    """Where one layer's keys of a sequence are in an engine's paged cache (references, no
    copy): enough to compute deferred rows later, while the sequence still holds its blocks."""

    key_cache: torch.Tensor       # as core.attention.gather_paged_keys reads it
    block_table: torch.Tensor
    table_row: int
    scale: float
    sliding_window: int | None = None


@dataclass
class DecodeCapture(_SelectedHeads):
    """Decode-time attention of one request: per generated token, each selected head's
    attention mass on each document span, ``[h, G, N]`` (docs/method.md, "Decode-time
    attention").

    Row ``r`` is the query at position ``first_pos + r``, ``first_pos`` being the prompt's last
    token (P - 1): row 0 is the prefill row that emits generated token 0, row ``r >= 1`` the
    query of generated token ``r - 1`` fed back at decode step ``r``, the step that emits token
    ``r``. So G emitted tokens have G rows; the last emitted token is never fed. Each row is
    the causal softmax over every cached key (fp32), summed over each span: never normalised
    over the spans. A step that recomputes positions (preemption, rejected draft tokens)
    overwrites their rows; rows past the newest step are dropped.

    Decode steps may be *deferred* (:meth:`defer`): a step keeps only its query rows and where
    the keys are, and :meth:`flush` computes every kept row at once, one gather and one matmul
    per layer for many steps. The engine integration must flush while the sequence still holds
    its blocks (before a step in which it is not scheduled: finished, aborted, preempted);
    :meth:`result` flushes first.
    """

    first_pos: int
    layers: dict[int, LayerHeads]
    spans: tuple[tuple[int, int], ...]
    num_prompt_tokens: int
    rows: torch.Tensor | None = None              # [h, capacity, N] on the engine's device
    count: int = 0                                # rows first_pos..first_pos+count-1 written
    error: str | None = None
    _step: tuple[int, int] | None = None          # (first position, tokens) of the open step
    _step_layers: set[int] = field(default_factory=set)
    _key_mismatch: torch.Tensor | None = None
    _q_index: dict[tuple[int, torch.device], torch.Tensor] = field(default_factory=dict)
    _span_matrix: dict[torch.device, torch.Tensor] = field(default_factory=dict)
    _cols: dict[int, int] = field(default_factory=dict)   # layer -> its first row of `rows`
    # deferred rows: their positions, per layer the (step's queries, row) of each and where
    # its keys are, and the keys the engine wrote for them (the self-check)
    _pending_pos: list[int] = field(default_factory=list)
    _pending: dict[int, list[tuple[torch.Tensor, int]]] = field(default_factory=dict)
    _where: dict[int, PagedKeys] = field(default_factory=dict)
    _pending_check: list[tuple[int, int, torch.Tensor, int]] = field(default_factory=list)

    def __post_init__(self):
        col = 0
        for layer, heads in self.layers.items():
            self._cols[layer] = col
            col += len(heads.index)

    # --- step boundaries --------------------------------------------------------------------
    def begin_step(self, first_pos: int, num_tokens: int) -> bool:
        """Open a step computing positions ``[first_pos, first_pos + num_tokens)``; False when
        it holds no position from the prompt's last token on."""
        end = first_pos + num_tokens
        lo = max(first_pos, self.first_pos)
        if end <= lo:
            return False
        if lo > self.first_pos + self.count and self.error is None:
            self.error = (f"decode positions {self.first_pos + self.count}..{lo - 1} were never "
                          "captured (steps ran without the attention hook: a replayed graph?)")
        self._step, self._step_layers = (first_pos, num_tokens), set()
        self.count = end - self.first_pos
        return True

    @property
    def _capture_start(self) -> int:
        return self.first_pos

    def end_step(self) -> None:
        self._check_step_layers("a decode step")
        self._step = None

    # --- per layer --------------------------------------------------------------------------
    def add_layer(self, layer: int, query: torch.Tensor, keys: torch.Tensor, scale: float,
                  sliding_window: int | None = None, key_offset: int = 0) -> None:
        """Add one layer's span mass for this step's rows.

        Args:
            query: ``[n, H_local, D]`` post-RoPE queries of this step's rows (every local head).
            keys: ``[H_kv_local, S, D]`` keys of positions ``key_offset..``, covering every
                position a row can see.
        """
        heads = self.layers[layer]
        offset, n = self.span_slice()
        lo = self._step[0] + offset
        positions = torch.arange(lo, lo + n, device=keys.device)
        self.put(layer, span_mass_rows(
            query.index_select(1, self._heads_on(layer, query.device)), keys, positions,
            heads.kv_heads, scale, self.spans_on(keys.device), sliding_window, key_offset))

    # --- deferred decode rows -----------------------------------------------------------------
    def defer_step(self) -> None:
        """This step's row (one token) is deferred: :meth:`defer` keeps it layer by layer."""
        offset, n = self.span_slice()
        assert n == 1, "only one-token decode steps are deferred"
        self._pending_pos.append(self._step[0] + offset)

    def defer(self, layer: int, queries: torch.Tensor, row: int, where: PagedKeys,
              written: torch.Tensor | None = None) -> None:
        """Keep this step's row of ``layer``: ``queries[row]`` (``[h, D]``, this layer's
        selected heads) and where its keys are; ``written[row]`` (``[H_kv, D]``): the key the
        engine wrote for it, checked against the cache at :meth:`flush`."""
        self._pending.setdefault(layer, []).append((queries, row))
        self._where[layer] = where
        if written is not None:
            self._pending_check.append((self._pending_pos[-1], layer, written, row))
        self._step_layers.add(layer)

    @property
    def pending(self) -> int:
        """Deferred rows not computed yet."""
        return len(self._pending_pos)

    def flush(self) -> None:
        """Compute every deferred row (the sequence's blocks must still hold its keys)."""
        positions, pending, checks = self._pending_pos, self._pending, self._pending_check
        self._pending_pos, self._pending, self._pending_check = [], {}, []
        if not positions or self.error is not None:
            return
        try:
            # the buffers were made inside the engine's forward (inference mode); a flush
            # between steps (a client reading the rows) must be allowed to update them
            with torch.inference_mode():
                self._compute(positions, pending, checks)
        except Exception as e:  # runs between engine steps: fail this request, not the engine
            self.error = f"deferred decode rows: {type(e).__name__}: {e}"

    def _compute(self, positions: list[int], pending: dict, checks: list) -> None:
        for layer, entries in pending.items():
            where, heads = self._where[layer], self.layers[layer]
            query = torch.stack([q[i] for q, i in entries])                       # [n, h, D]
            self._put_at(layer, positions, paged_span_mass(
                query, where.key_cache, where.block_table[where.table_row], positions,
                heads.kv_heads, where.scale, self.spans_on(query.device),
                where.sliding_window))
        for layer in {c[1] for c in checks}:
            mine = [c for c in checks if c[1] == layer]
            where = self._where[layer]
            cache = where.key_cache
            block_size = cache.shape[1] * (cache.shape[2] if cache.dim() == 6 else 1)
            pos = torch.tensor([c[0] for c in mine], device=where.block_table.device)
            read = paged_keys_at(cache, where.block_table[where.table_row][pos // block_size],
                                 pos % block_size)
            self.check_keys(read, torch.stack([w[i] for _, _, w, i in mine]))

    def _put_at(self, layer: int, positions: list[int], mass: torch.Tensor) -> None:
        self._reserve(mass.device)
        col = self._cols[layer]
        at = torch.tensor([p - self.first_pos for p in positions], device=mass.device)
        self.rows[col:col + mass.shape[1]].index_copy_(1, at, mass.transpose(0, 1))

    def put(self, layer: int, mass: torch.Tensor) -> None:
        """Store one layer's ``[n, h, N]`` mass of this step's rows (computed here or, for a
        batch of decode steps, by the driver)."""
        offset, n = self.span_slice()
        self._reserve(mass.device)
        col, r = self._cols[layer], self._step[0] + offset - self.first_pos
        self.rows[col:col + mass.shape[1], r:r + n] = mass.transpose(0, 1)
        self._step_layers.add(layer)

    def spans_on(self, device: torch.device) -> torch.Tensor:
        """The ``[P, N]`` :func:`span_matrix` of the documents, on ``device``."""
        if device not in self._span_matrix:   # built once per request and device
            self._span_matrix[device] = span_matrix(self.spans, self.num_prompt_tokens, device)
        return self._span_matrix[device]

    def _reserve(self, device: torch.device) -> None:
        """Room for ``count`` rows, doubling (a copy every doubling, not every step)."""
        have = 0 if self.rows is None else self.rows.shape[1]
        if have >= self.count:
            return
        grown = torch.zeros(sum(len(h.index) for h in self.layers.values()),
                            max(2 * have, self.count, 32), len(self.spans),
                            dtype=torch.float32, device=device)
        if self.rows is not None:
            grown[:, :have] = self.rows
        self.rows = grown

    # --- result -----------------------------------------------------------------------------
    def result(self) -> CaptureResult:
        """``[h, count, N]`` rows in layer order, on the CPU (one copy); deferred rows are
        computed first."""
        self.flush()
        if self._final_error() is not None:
            return CaptureResult(self.index, torch.zeros(0, 0, 0), self.error)
        if self.count == 0 or self.rows is None:
            return CaptureResult(self.index, torch.zeros(0, 0, 0),
                                 "no decode-time row was captured")
        return CaptureResult(self.index, self.rows[:, :self.count].cpu())
