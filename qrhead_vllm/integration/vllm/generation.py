"""One generating request that also scores its documents (prefill) and, optionally, records
where each generated token looked (decode), on a running ``AsyncLLM``.

The request is the chat's own: its prompt is a scoring prompt (documents, then the question,
then the assistant header) and its SamplingParams are the caller's, with our spec merged into
``extra_args``. The worker keeps the prefill rows under the spec's key as soon as the last
prompt token is computed, i.e. before the first output reaches us; the decode-time rows under
``decode_key(key)``, taken once the last output is in. The null-calibration pass (the
documents' prefix and the null query, one token) is submitted with the request, as
``AsyncVLLMBackend`` submits a rerank's two passes: vLLM registers the request's blocks in the
prefix cache as it schedules them, so the null pass, scheduled after it (in the same step at
the latest), computes only its query and the documents' tokens after the last full block, in
the prefill step. Started after the first output instead, it landed in an early decode step
and slowed that step (docs/results/decode_capture.md).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator, Sequence

import torch

from qrhead_vllm.backends import MassRequest, MassResult
from qrhead_vllm.core import Head, ScoringPrompt
from qrhead_vllm.errors import CaptureError
from qrhead_vllm.integration.request_spec import RequestSpec, decode_key, merge_results
from qrhead_vllm.integration.vllm.backend import finish_request


@dataclass(frozen=True)
class DecodeMass:
    """Decode-time attention of one generation: ``mass[i, h, j]`` is head ``h``'s attention
    mass on document ``j`` in the forward step that emitted generated token ``i`` (row 0: the
    prompt's last position, in the prefill; row ``i >= 1``: generated token ``i - 1`` fed
    back). Not normalised over the documents."""

    mass: torch.Tensor              # [G, H, N] fp32
    token_ids: tuple[int, ...]      # the G generated tokens


def scored_params(params, spec: RequestSpec):
    """A copy of the caller's SamplingParams carrying ``spec``.

    Raises:
        ValueError: ``n > 1`` (its sequences would share one key) or a beam search.
    """
    if getattr(params, "n", 1) != 1:
        raise ValueError(f"n={params.n}: document scores and citations need one sequence per "
                         "request (n=1)")
    out = params.clone()
    out.extra_args = {**(params.extra_args or {}), **spec.as_params()}
    return out


class ScoredGeneration:
    """Iterate it for vLLM's outputs; then :meth:`prefill` and :meth:`decode_mass`."""

    def __init__(self, backend, real: ScoringPrompt, params, heads: Sequence[Head],
                 null: ScoringPrompt | None = None, decode: bool = False,
                 request_id: str | None = None):
        self._backend, self._engine = backend, backend.engine
        self.request = MassRequest(real, null, tuple(heads))
        self.key = uuid.uuid4().hex
        self.request_id = request_id or self.key
        spec = RequestSpec(real.query_start, self.request.heads, self.key,
                           real.doc_spans if decode else ())
        self.params = scored_params(params, spec)
        self.decode = decode
        self._keys = [self.key]           # every capture key of ours the workers may hold
        self._token_ids: list[int] = []
        self._first = asyncio.Event()
        self._null: asyncio.Task | None = None       # the null pass, submitted with the request
        self._prefill: asyncio.Task | None = None
        self._ended = False
        self._closed = False
        self._iterating = False
        self._started = time.perf_counter()

    # --- the generation ---------------------------------------------------------------------
    def __aiter__(self) -> AsyncIterator[Any]:
        if self._iterating:
            raise RuntimeError("a ScoredGeneration is one request: iterate it once")
        self._iterating = True
        return self._outputs()

    async def _outputs(self):
        from vllm.sampling_params import RequestOutputKind
        delta = self.params.output_kind == RequestOutputKind.DELTA
        prompt = {"prompt_token_ids": list(self.request.real.token_ids)}
        stream = self._engine.generate(prompt, self.params, request_id=self.request_id)
        if self.request.null is not None:
            # Created after the request's stream, so (first come, first served) it runs second
            # and submits second, as AsyncVLLMBackend's two passes do.
            self._null = asyncio.ensure_future(self._backend._prefill(
                self.request.null, self.request.heads, self._keys))
            self._null.add_done_callback(_retrieved)
        try:
            async for out in stream:
                ids = out.outputs[0].token_ids if out.outputs else ()
                self._token_ids = self._token_ids + list(ids) if delta else list(ids)
                if self._prefill is None:
                    self._prefill = asyncio.ensure_future(self._collect_prefill())
                    self._prefill.add_done_callback(_retrieved)
                    self._first.set()
                yield out
            self._ended = True
        except BaseException:
            await self.aclose()
            raise
        finally:
            self._first.set()        # prefill() never waits on a generation that is over

    async def aclose(self) -> None:
        """Stop: abort the request and the null pass in vLLM, drop their results on the
        workers. Idempotent; a no-op after a complete run whose results were taken."""
        if self._closed:
            return
        self._closed = True
        for task in (self._prefill, self._null):   # cancelling the null pass aborts it in vLLM
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if not self._ended:
            await self._engine.abort(self.request_id)
        keys = self._keys + ([decode_key(self.key)] if self.decode else [])
        if keys:
            await self._engine.collective_rpc("qrhead_pop", args=(keys,))

    # --- the captures -----------------------------------------------------------------------
    async def prefill(self) -> MassResult:
        """The query span's mean rows (and the null pass's), as a 1-token scoring request of
        the same prompt gives them; waits for the first output and the null pass.

        Raises:
            CaptureError: a capture failed or is missing (the message says which).
        """
        await self._first.wait()
        if self._prefill is None:
            raise CaptureError("the request ended before its first output: no prefill scores")
        return await asyncio.shield(self._prefill)

    async def _collect_prefill(self) -> MassResult:
        """Started at the first output, when the request's prefill rows are in the workers."""
        req, null_key, null_hits = self.request, None, None
        if self._null is not None:
            null_key, null_hits = await asyncio.shield(self._null)
        replies = await self._engine.collective_rpc("qrhead_pop", args=(self._keys,))
        self._keys = []
        return finish_request(replies, req, self.key, null_key, null_hits,
                              self._backend.facts.model_id, self._started)

    async def decode_mass_so_far(self) -> DecodeMass:
        """The decode-time span mass of the tokens generated so far (for citations streamed as
        sentences close); the capture goes on.

        Raises:
            RuntimeError: without ``decode``. CaptureError: as :meth:`decode_mass`.
        """
        if not self.decode:
            raise RuntimeError("decode_mass_so_far() needs decode=True")
        return await self._decode_rows("qrhead_peek", list(self._token_ids))

    async def decode_mass(self) -> DecodeMass:
        """The decode-time span mass of every generated token; call it once the iteration
        ended.

        Raises:
            RuntimeError: called before the end of the generation, or without ``decode``.
            CaptureError: the capture failed, or has fewer rows than tokens were generated.
        """
        if not self.decode or not self._ended:
            raise RuntimeError("decode_mass() needs decode=True and a generation that ended")
        out = await self._decode_rows("qrhead_pop", self._token_ids)
        self.decode = False   # taken: aclose() has nothing left to drop
        return out

    async def _decode_rows(self, rpc: str, token_ids: list[int]) -> DecodeMass:
        """The workers' rows for the first ``len(token_ids)`` generated tokens (a worker may
        hold rows past them: a step already under way when the client stopped reading)."""
        key = decode_key(self.key)
        replies = await self._engine.collective_rpc(rpc, args=([key],))
        rows = merge_results((r.get(key) for r in replies), len(self.request.heads),
                             f"decode-time capture for request {key} is missing")   # [H, R, N]
        g = len(token_ids)
        if rows.shape[1] < g:
            raise CaptureError(f"decode-time capture holds {rows.shape[1]} rows for {g} "
                               "generated tokens (decode steps ran without the attention hook)")
        return DecodeMass(rows[:, :g].permute(1, 0, 2).contiguous(), tuple(token_ids))


def _retrieved(task: asyncio.Task) -> None:
    """Mark a prefill task's failure as seen: a caller that never asks for the scores must not
    get asyncio's "exception was never retrieved" log (one who asks gets it raised)."""
    if not task.cancelled():
        task.exception()
