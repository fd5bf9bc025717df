"""QRHead scoring on vLLM: the offline ``LLM`` backend and the async engine-client backend.

A scoring request is an ordinary prefill (``max_tokens=1``) whose SamplingParams carry a
:class:`RequestSpec`; the worker hook captures the selected heads and keeps the result under
the spec's key until we pop it with ``collective_rpc``.

Calibration: a real prompt and its null twin ("N/A") are submitted together, in one engine
call. They share every token before the query span, and vLLM registers a request's blocks in
the prefix cache when it schedules them, so whichever of the two is scheduled second finds the
documents' blocks of the first (in the same step too: each layer writes the whole batch's keys
before any of its attention runs) and computes only its own suffix. The offline backend puts
the reals first, so with vLLM's first-come-first-served scheduling the null is the one that
hits (``MassResult.null_cached_tokens``); a twin scheduled while its partner's prefill is still
under way gets a shorter hit, never a wrong score. Separate calls, the real one first
(``one_call=False``), cost a second engine step per query for the same cache hit.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, Sequence

import torch

from qrhead_vllm import metrics
from qrhead_vllm.backends import InThread, MassRequest, MassResult
from qrhead_vllm.core import ScoringPrompt
from qrhead_vllm.errors import CaptureError
from qrhead_vllm.heads import ModelFacts
from qrhead_vllm.integration.vllm.engine_args import engine_env, engine_kwargs
from qrhead_vllm.integration.vllm.layer_cut import last_layer_of
from qrhead_vllm.integration.request_spec import RequestSpec, merge_results


def scoring_request(prompt: ScoringPrompt, heads) -> tuple[dict, Any, str]:
    """(prompt, SamplingParams, key) of one capture-carrying prefill."""
    from vllm import SamplingParams
    key = uuid.uuid4().hex
    spec = RequestSpec(prompt.query_start, tuple(heads), key)
    params = SamplingParams(max_tokens=1, temperature=0.0, extra_args=spec.as_params())
    return {"prompt_token_ids": list(prompt.token_ids)}, params, key


def merge_worker_results(replies: Sequence[dict], key: str, num_heads: int) -> torch.Tensor:
    """Each TP rank returns rows for its own heads; put them back in the caller's order.

    Raises:
        CaptureError: a rank reported a capture error (e.g. the KV self-check, a layer never
            captured) or no rank returned the request's heads.
    """
    return merge_results((reply.get(key) for reply in replies), num_heads,
                         f"QRHead capture for request {key} is missing; is the engine running "
                         "with QRHEAD_ENABLED=1 and the qrhead worker extension?")


def finish_request(replies: Sequence[dict], req: MassRequest, real_key: str,
                   null_key: str | None, null_hits: int | None, model: str,
                   started: float) -> MassResult:
    """One query's MassResult from the workers' replies, recorded in the QRHead metrics.

    Raises:
        CaptureError: as :func:`merge_worker_results` (counted in qrhead_capture_errors_total).
    """
    n = len(req.heads)
    try:
        real = merge_worker_results(replies, real_key, n)
        null = merge_worker_results(replies, null_key, n) if null_key else None
    except CaptureError:
        metrics.record_capture_error(model)
        raise
    capture_s = sum(max((r[k].get("capture_s", 0.0) for r in replies if k in r), default=0.0)
                    for k in (real_key, null_key) if k)   # ranks capture in parallel: max
    metrics.record_scored(model, len(req.real.doc_spans), capture_s,
                          time.perf_counter() - started)
    return MassResult(real, null, null_hits)


class _ModelInfo:
    """Tokenizer and config facts shared by both vLLM backends. ``last_layer`` is the cut of a
    score-only engine (None: the full model), read from the engine's own config."""

    def _init_model_info(self, model_path: str, model_id: str, vllm_config) -> None:
        from transformers import AutoTokenizer
        model_config = vllm_config.model_config
        self.last_layer = last_layer_of(vllm_config)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)  # fast: char offsets
        self.hf_config = model_config.hf_config
        self.facts = ModelFacts.from_hf_config(self.hf_config, model_id)
        self.max_model_len = model_config.max_model_len
        import vllm
        self.engine_version = vllm.__version__


class VLLMBackend(InThread, _ModelInfo):
    """Offline backend on ``vllm.LLM``; a batch of queries is prefilled together (the async
    path runs it in a worker thread)."""

    def __init__(self, model_path: str, model_id: str | None = None, dtype: str = "float32",
                 one_call: bool = True, **overrides: Any):
        from vllm import LLM
        self.one_call = one_call    # False: the null twins in a second call, after the reals
        kwargs = engine_kwargs(model_path, dtype, **overrides)
        with engine_env(kwargs.get("tensor_parallel_size", 1)):
            self.llm = LLM(**kwargs)
        self._init_model_info(model_path, model_id or model_path, self.llm.llm_engine.vllm_config)

    def attention_mass(self, requests: Sequence[MassRequest]) -> list[MassResult]:
        started = time.perf_counter()
        nulls = [(i, r) for i, r in enumerate(requests) if r.null is not None]
        items = [(r.real, r.heads) for r in requests] + [(r.null, r.heads) for _, r in nulls]
        n = len(requests)
        done = (self._prefill(items) if self.one_call
                else self._prefill(items[:n]) + self._prefill(items[n:]))
        real, null = done[:n], dict(zip([i for i, _ in nulls], done[n:]))
        keys = [k for k, _ in done]
        replies = self.llm.collective_rpc("qrhead_pop", args=(keys,))
        return [finish_request(replies, r, real[i][0], *(null.get(i) or (None, None)),
                               self.facts.model_id, started) for i, r in enumerate(requests)]

    def _prefill(self, items) -> list[tuple[str, int]]:
        """Prefill prompts together; returns (key, prefix-cache hit tokens) per prompt."""
        if not items:
            return []
        reqs = [scoring_request(p, heads) for p, heads in items]
        outs = self.llm.generate([p for p, _, _ in reqs], [s for _, s, _ in reqs],
                                 use_tqdm=False)
        return [(key, o.num_cached_tokens or 0) for (_, _, key), o in zip(reqs, outs)]

    def stats(self) -> list[dict]:
        return self.llm.collective_rpc("qrhead_stats")

    def close(self) -> None:
        self.llm = None


class AsyncVLLMBackend(_ModelInfo):
    """Backend on a running ``AsyncLLM`` (the engine client the Serve app also generates with).

    Each query of :meth:`attention_mass_async`, and each concurrent call, becomes its own engine
    request, which vLLM's scheduler batches; nothing here serialises them.
    """

    def __init__(self, engine, model_path: str, model_id: str | None = None):
        self.engine = engine
        self._init_model_info(model_path, model_id or model_path, engine.vllm_config)

    async def attention_mass_async(self, requests: Sequence[MassRequest]) -> list[MassResult]:
        return list(await asyncio.gather(*(self._one_async(r) for r in requests)))

    async def _one_async(self, req: MassRequest) -> MassResult:
        started, keys = time.perf_counter(), []
        passes = [asyncio.ensure_future(self._prefill(p, req.heads, keys))
                  for p in (req.real, req.null) if p is not None]
        try:
            done = await asyncio.gather(*passes)
            replies = await self.engine.collective_rpc("qrhead_pop", args=(keys,))
        except BaseException:
            for task in passes:   # one failed or we were cancelled: stop the other (aborts it)
                task.cancel()
            await asyncio.gather(*passes, return_exceptions=True)
            if keys:  # drop whatever the workers finished for us
                await self.engine.collective_rpc("qrhead_pop", args=(keys,))
            raise
        (real_key, _), (null_key, null_hits) = done[0], (done[1] if len(done) > 1
                                                          else (None, None))
        return finish_request(replies, req, real_key, null_key, null_hits, self.facts.model_id,
                              started)

    async def _prefill(self, prompt: ScoringPrompt, heads, keys: list[str]) -> tuple[str, int]:
        """Run one capture-carrying prefill to completion (an abort propagates to vLLM)."""
        engine_prompt, params, key = scoring_request(prompt, heads)
        keys.append(key)
        final = None
        async for out in self.engine.generate(engine_prompt, params, request_id=key):
            final = out
        return key, (final.num_cached_tokens or 0) if final is not None else 0

    def generate_scored(self, real: ScoringPrompt, params, heads, null: ScoringPrompt | None = None,
                        decode: bool = False, request_id: str | None = None):
        """One generating request that scores its documents from its own prefill and, with
        ``decode``, records each generated token's attention on them: a
        :class:`~qrhead_vllm.integration.vllm.generation.ScoredGeneration` to iterate.

        Raises:
            ValueError: SamplingParams it cannot capture (``n > 1``).
        """
        from qrhead_vllm.integration.vllm.generation import ScoredGeneration
        return ScoredGeneration(self, real, params, heads, null, decode, request_id)

    def attention_mass(self, requests: Sequence[MassRequest]) -> list[MassResult]:
        raise RuntimeError("AsyncVLLMBackend is async: use attention_mass_async / rank_async")

    def stats(self) -> list[dict]:
        raise RuntimeError("AsyncVLLMBackend is async: use stats_async")

    async def stats_async(self) -> list[dict]:
        return await self.engine.collective_rpc("qrhead_stats")

    def close(self) -> None:
        self.engine.shutdown()
