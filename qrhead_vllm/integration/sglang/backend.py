"""QRHead scoring on SGLang: one backend over an offline ``sglang.Engine``, sync and async.

A scoring request is an ordinary prefill (``max_new_tokens=1``) whose sampling params carry a
:class:`RequestSpec` in ``custom_params``; the scheduler's hooks capture the selected heads and
the result comes back in the request's own ``meta_info["qrhead"]``: no pull call, nothing left
in the engine. The real prompts are prefilled first, their null twins ("N/A") after, so the
null pass hits the documents' prefix in the radix cache and computes only the suffix.

The engine's tokenizer manager binds to the event loop that first talks to it: use either the
sync methods, or :meth:`SGLangBackend.attention_mass_async` from one event loop (the Serve
replica's, or ``backend.engine.loop``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, Sequence

from qrhead_vllm import metrics
from qrhead_vllm.backends import MassRequest, MassResult
from qrhead_vllm.core import ScoringPrompt
from qrhead_vllm.heads import ModelFacts
from qrhead_vllm.errors import CaptureError, InsufficientMemoryError
from qrhead_vllm.integration.sglang.engine_args import check_pool, engine_env, engine_kwargs
from qrhead_vllm.integration.request_spec import RequestSpec
from qrhead_vllm.integration.sglang.capture import DECODE_REFUSAL
from qrhead_vllm.integration.sglang.results import capture_seconds, decode_result


def scoring_request(prompt: ScoringPrompt, heads) -> tuple[list[int], dict[str, Any], str]:
    """(input ids, sampling params, request id) of one capture-carrying prefill."""
    spec = RequestSpec(prompt.query_start, tuple(heads))
    params = {"max_new_tokens": 1, "temperature": 0.0,
              "custom_params": spec.as_params()}
    return list(prompt.token_ids), params, f"qrhead-{uuid.uuid4().hex}"


def start_engine(model_path: str, dtype: str = "float32", qrhead: bool = True, **overrides):
    """An ``sglang.Engine`` shaped and sized by :func:`engine_kwargs`, hooked when ``qrhead``.

    Raises:
        EngineCompatibilityError: unsupported SGLang version or engine shape (before start).
        InsufficientMemoryError: it would not fit this machine (before start), or its KV pool
            came out smaller than one context (after start; the engine is shut down).
    """
    with engine_env(qrhead):
        kwargs = engine_kwargs(model_path, dtype, qrhead=qrhead, **overrides)
        import sglang
        engine = sglang.Engine(**kwargs)
    if "max_total_tokens" not in overrides:      # we sized it: check it got what it needs
        try:
            check_pool(engine, int(engine.tokenizer_manager.context_len))
        except InsufficientMemoryError:
            engine.shutdown()
            raise
    return engine


class SGLangBackend:
    """Scoring backend on an SGLang engine (started here, or passed in already running)."""

    last_layer = None       # SGLang engines run the whole model (no score-only cut)

    def __init__(self, model_path: str, model_id: str | None = None, dtype: str = "float32",
                 engine=None, **overrides: Any):
        from transformers import AutoConfig, AutoTokenizer
        self.engine = engine or start_engine(model_path, dtype, **overrides)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)  # fast: char offsets
        self.hf_config = AutoConfig.from_pretrained(model_path)
        self.facts = ModelFacts.from_hf_config(self.hf_config, model_id or model_path)
        self.max_model_len = int(self.engine.tokenizer_manager.context_len)
        import sglang
        self.engine_version = sglang.__version__

    # --- sync: a batch of queries prefilled together ----------------------------------------
    def attention_mass(self, requests: Sequence[MassRequest]) -> list[MassResult]:
        started = time.perf_counter()
        real = self._prefill([(r.real, r.heads) for r in requests])
        null_of = [i for i, r in enumerate(requests) if r.null is not None]
        nulls = dict(zip(null_of, self._prefill([(requests[i].null, requests[i].heads)
                                                 for i in null_of])))
        return [self._finish(r, real[i], nulls.get(i), started) for i, r in enumerate(requests)]

    def _prefill(self, items) -> list[dict]:
        """Prefill prompts in one engine batch; the output of each."""
        if not items:
            return []
        reqs = [scoring_request(p, heads) for p, heads in items]
        return self.engine.generate(input_ids=[ids for ids, _, _ in reqs],
                                    sampling_params=[params for _, params, _ in reqs],
                                    rid=[rid for _, _, rid in reqs])

    # --- async: each query, and each call, its own engine requests (the scheduler batches) ---
    async def attention_mass_async(self, requests: Sequence[MassRequest]) -> list[MassResult]:
        return list(await asyncio.gather(*(self._one_async(r) for r in requests)))

    async def _one_async(self, req: MassRequest) -> MassResult:
        started = time.perf_counter()
        real = await self._prefill_async(req.real, req.heads)
        null = await self._prefill_async(req.null, req.heads) if req.null is not None else None
        return self._finish(req, real, null, started)

    def _finish(self, req: MassRequest, real: dict, null: dict | None,
                started: float) -> MassResult:
        """Decode both passes' results and record the query in the QRHead metrics.

        Raises:
            CaptureError: as :func:`decode_result` (counted in qrhead_capture_errors_total).
        """
        model, n = self.facts.model_id, len(req.heads)
        try:
            real_rows = decode_result(real["meta_info"], n)
            null_rows = decode_result(null["meta_info"], n) if null is not None else None
        except CaptureError:
            metrics.record_capture_error(model)
            raise
        metas = [o["meta_info"] for o in (real, null) if o is not None]
        metrics.record_scored(model, len(req.real.doc_spans),
                              sum(capture_seconds(m) for m in metas),
                              time.perf_counter() - started)
        hits = int(null["meta_info"].get("cached_tokens") or 0) if null is not None else None
        return MassResult(real_rows, null_rows, hits)

    async def _prefill_async(self, prompt: ScoringPrompt, heads) -> dict:
        ids, params, rid = scoring_request(prompt, heads)
        try:
            out = await self.engine.async_generate(input_ids=ids, sampling_params=params,
                                                   rid=rid)
        except BaseException:
            # SGLang does not abort an engine request whose awaiting task is cancelled: do it,
            # so the scheduler drops the prefill (and the capture with it).
            self.engine.tokenizer_manager.abort_request(rid)
            raise
        return out

    # --- generation with captures: vLLM only -----------------------------------------------
    def generate_scored(self, real: ScoringPrompt, params, heads, null: ScoringPrompt | None = None,
                        decode: bool = False, request_id: str | None = None):
        """Refused with the reason (vLLM's ``AsyncVLLMBackend.generate_scored`` has it): the
        hooks here capture extend batches only, never decode steps, so citations would be
        empty numbers.

        Raises:
            CaptureError: always.
        """
        if decode:
            raise CaptureError(DECODE_REFUSAL)
        raise CaptureError("document scores from a generating request are not implemented on "
                           "the SGLang engine; score with /v1/rerank, or serve the model on vLLM")

    # --- introspection and shutdown ---------------------------------------------------------
    def stats(self) -> dict[str, int]:
        """Captures held by the scheduler (requests mid-prefill): ``{"active": n}``."""
        return self.engine.get_server_info()["internal_states"][0]["qrhead"]

    async def stats_async(self) -> dict[str, int]:
        states = await self.engine.tokenizer_manager.get_internal_state()
        return states[0]["qrhead"]

    def close(self) -> None:
        # SGLang's Engine.shutdown kills every child process of this process, another SGLang
        # engine's scheduler included: hold one SGLang engine per process at a time.
        engine, self.engine = self.engine, None
        if engine is not None:
            engine.shutdown()


def run_in_engine_loop(backend: SGLangBackend, coro):
    """Run a coroutine on the loop the engine's tokenizer manager is bound to (sync callers)."""
    loop = backend.engine.loop
    if loop.is_running():
        raise RuntimeError("the engine's event loop is running: await the coroutine instead")
    return loop.run_until_complete(coro)
