"""Hooks for SGLang 0.5.x (0.5.23 verified on CPU), applied in every SGLang process by the
``sglang.srt.plugins`` entry point; they act in the scheduler process.

1. ``RadixAttention.forward``: after the original call (the backend has written this step's
   keys to the pool) hand the layer, q and k to the capture store.
2. ``TpModelWorker.forward_batch_generation``: the step boundary. It receives the
   ``ScheduleBatch`` (its ``reqs``, ``prefix_lens`` and ``extend_lens`` say which rows are
   scoring requests) and runs ``ModelRunner.forward`` inside; after it, finished captures are
   attached to their requests (``req.customized_info``).
3. ``Req._compute_max_prefix_len``: cap a scoring request's radix-cache hit at its query-span
   start (the span's queries are never cached, so a hit inside it would lose rows; the
   documents before it are shared as usual, which is what serves the null pass). SGLang's
   public route to the same cap is a request asking for input logprobs from the span start
   (``return_logprob=True, logprob_start_len=span_start``, which ``_compute_max_prefix_len``
   honours), but it costs the LM head over the span and a logprob payload per request, and a
   client's own ``/generate`` request would lose the cap; so the wrap stays (a hit inside the
   span would still not give a wrong score: ``SpanCapture`` reports the rows it never saw).
4. ``ModelRunner.init_cuda_graphs``: once pools, attention backend and graphs exist, refuse
   what we cannot score and probe the KV layout (``kv_layout.verify_runner``).
5. ``Scheduler.on_idle``: forget requests aborted before their last prompt token.
6. ``SchedulerInternalStateController.get_internal_state``: report the store's size under
   ``internal_states[i]["qrhead"]`` (``Engine.get_server_info()``, ``/get_server_info``).

Every patch wraps the original through ``wrap_method`` (signature checked at apply time).
"""

from __future__ import annotations

import logging

from qrhead_vllm.errors import EngineCompatibilityError
from qrhead_vllm.integration.request_spec import prefix_hit_cap
from qrhead_vllm.integration.sglang.capture import STORE
from qrhead_vllm.integration.sglang.kv_layout import verify_runner
from qrhead_vllm.patches import wrap_method

logger = logging.getLogger(__name__)


def apply() -> None:
    from sglang.srt.layers.radix_attention import RadixAttention
    from sglang.srt.managers.schedule_batch import Req
    from sglang.srt.managers.scheduler import Scheduler
    from sglang.srt.managers.scheduler_components.internal_state import (
        SchedulerInternalStateController)
    from sglang.srt.managers.tp_worker import TpModelWorker
    from sglang.srt.model_executor.model_runner import ModelRunner

    wrap_method(RadixAttention, "forward", ("self", "q", "k", "v", "forward_batch"),
                _attention_wrapper)
    wrap_method(TpModelWorker, "forward_batch_generation", ("self", "batch", "forward_batch"),
                _step_wrapper)
    wrap_method(Req, "_compute_max_prefix_len", ("self", "input_len"), _prefix_cap_wrapper)
    wrap_method(ModelRunner, "init_cuda_graphs", ("self",), _startup_check_wrapper)
    wrap_method(Scheduler, "on_idle", ("self",), _idle_wrapper)
    wrap_method(SchedulerInternalStateController, "get_internal_state", ("self", "recv_req"),
                _internal_state_wrapper)


def _attention_wrapper(original):
    def forward(self, q, k, v, forward_batch, *args, **kwargs):
        out = original(self, q, k, v, forward_batch, *args, **kwargs)
        STORE.on_attention(self, q, k)
        return out
    return forward


def _step_wrapper(original):
    def forward_batch_generation(self, batch=None, *args, **kwargs):
        draft = getattr(self.model_runner, "is_draft_worker", False)
        STORE.begin_step(None if draft else batch)
        try:
            return original(self, batch, *args, **kwargs)
        finally:
            STORE.end_step()
    return forward_batch_generation


def _prefix_cap_wrapper(original):
    def _compute_max_prefix_len(self, input_len, *args, **kwargs):
        limit = original(self, input_len, *args, **kwargs)
        cap = prefix_hit_cap(getattr(self.sampling_params, "custom_params", None))
        return limit if cap is None else min(limit, cap)
    return _compute_max_prefix_len


def _startup_check_wrapper(original):
    def init_cuda_graphs(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if not getattr(self, "is_draft_worker", False):
            layers = verify_runner(self)
            ids = [layer.layer_id for layer in layers]
            num_layers = self.model_config.num_hidden_layers
            if ids != list(range(num_layers)):
                raise EngineCompatibilityError(
                    f"qrhead-vllm maps heads by layer index, but this model's attention layers "
                    f"are numbered {ids[:8]}... for {num_layers} decoder layers")
            STORE.configure(layers[0].tp_q_head_num, layers[0].tp_k_head_num, num_layers)
            logger.info("qrhead-vllm: %d attention layers verified (%s)", len(layers),
                        type(self.attn_backend).__name__)
        return out
    return init_cuda_graphs


def _idle_wrapper(original):
    def on_idle(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if STORE.driver.requests:
            STORE.prune()
        return out
    return on_idle


def _internal_state_wrapper(original):
    def get_internal_state(self, recv_req, *args, **kwargs):
        out = original(self, recv_req, *args, **kwargs)
        out.internal_state["qrhead"] = STORE.stats()
        return out
    return get_internal_state

