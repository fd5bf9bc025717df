"""Score-only engines: build, load and run the model only up to the deepest layer scoring needs.

A head in layer ``l`` reads queries and keys computed by layers ``0..l`` alone, so layers after
the deepest selected head change nothing a score depends on. A *score-only* engine is started
with an explicit cut, ``last_layer``, carried in the engine's own config
(``additional_config["qrhead"]["last_layer"]``), so every vLLM process of that engine, and only
of that engine, sees it. In the worker, vLLM's pipeline-parallel machinery builds the partial
model: the model is built as if it were the only pipeline stage and that stage ended at
``last_layer + 1`` (``make_layers`` puts ``PPMissingLayer`` placeholders after it, whose weights
the loader skips and whose attention layers get no KV cache). The hook lives in
``qrhead_vllm.patches``; this module holds the checks around it.

What a truncated model cannot do is generate: its last hidden state never went through the
remaining layers, so its logits are meaningless. A score-only engine therefore refuses every
request that is not a one-token scoring request whose heads lie within the cut, at admission
(:func:`check_request`), with the layer named.

Why patches and not vLLM's documented model registration (tried for vLLM 0.32, issue 18): a
class ``ScoreOnlyLlamaForCausalLM(LlamaForCausalLM)`` registered by string
(``ModelRegistry.register_model``) and selected with ``hf_overrides={"architectures": [...]}``
would replace the ``get_pp_indices`` and ``load_model`` wraps, but

* ``LlamaModel`` sizes ``make_layers`` from ``hf_config.num_hidden_layers``, so the class would
  have to lower it on the shared config while its ``__init__`` runs (the same scoped trick as
  the wrap, on a shared object instead of a context variable), and filter the deeper layers'
  weights out of ``load_weights``;
* it renames the architecture for everything downstream (``model_config.architectures``, the
  ``ModelFacts`` a backend reads from vLLM's config, the verified-model check, logs), and needs
  one subclass per verified architecture, where the wrap serves any model built by
  ``make_layers`` (:func:`verify_partial_model` refuses the others);
* overriding ``num_hidden_layers`` alone (no class) changes the model's facts: head configs
  would no longer match it (``HeadConfig.check_model`` compares ``num_layers``).

Admission has a documented hook too, a custom logits processor's ``validate_params``, but it
receives the ``SamplingParams`` only (not the engine's config, so not its cut), and a custom
logits processor joins every sampling step of every request; ``InputProcessor._validate_params``
stays wrapped. Size is about equal either way; the wraps are model-agnostic and leave the
engine's config untouched, so they are kept.
"""

from __future__ import annotations

from typing import Any

from qrhead_vllm.core.heads import beyond_last_layer
from qrhead_vllm.errors import EngineCompatibilityError
from qrhead_vllm.integration.request_spec import NAMESPACE, MalformedSpec, RequestSpec

# Model classes whose partial build is verified end to end: the equality test against the full
# engine covers them (tests/test_vllm_early_exit.py: Llama; tests/test_vllm_early_exit_qwen2.py:
# Qwen2). Others are refused at start-up.
VERIFIED_PARTIAL_MODELS = ("LlamaForCausalLM", "Qwen2ForCausalLM")


def additional_config(last_layer: int) -> dict[str, Any]:
    """The ``additional_config`` entry that makes an engine score-only up to ``last_layer``."""
    return {NAMESPACE: {"last_layer": int(last_layer)}}


def last_layer_of(vllm_config) -> int | None:
    """The cut of a score-only engine, or None for an engine with the full model."""
    extra = getattr(vllm_config, "additional_config", None)
    if not isinstance(extra, dict) or not isinstance(extra.get(NAMESPACE), dict):
        return None
    value = extra[NAMESPACE].get("last_layer")
    return None if value is None else int(value)


def check_model(architectures, num_layers: int, last_layer: int) -> None:
    """Refuse a cut we cannot honour exactly: an unverified model class or a layer outside it.

    Raises:
        EngineCompatibilityError: naming the model class or the layer range.
    """
    archs = list(architectures or [])
    if not archs or archs[0] not in VERIFIED_PARTIAL_MODELS:
        raise EngineCompatibilityError(
            f"a score-only engine (last_layer={last_layer}) is verified only for "
            f"{', '.join(VERIFIED_PARTIAL_MODELS)}; this model is {archs or 'unknown'}: start "
            "it without last_layer (the full model)")
    if not 0 <= last_layer < num_layers:
        raise EngineCompatibilityError(
            f"last_layer={last_layer} is outside the model's layers 0..{num_layers - 1}")


def check_cut(vllm_config, last_layer: int) -> None:
    """:func:`check_model` in the worker, before the model is built (whoever started the
    engine), plus pipeline parallelism, whose stage boundaries the cut would collide with.

    Raises:
        EngineCompatibilityError: see :func:`check_model`; or pipeline parallelism.
    """
    model_config = vllm_config.model_config
    check_model(getattr(model_config, "architectures", None),
                model_config.get_total_num_hidden_layers(), last_layer)
    if vllm_config.parallel_config.pipeline_parallel_size > 1:
        raise EngineCompatibilityError("a score-only engine cannot use pipeline parallelism")


def verify_partial_model(model, last_layer: int) -> None:
    """After loading: the model holds exactly layers ``0..last_layer`` and runs no others.

    Raises:
        EngineCompatibilityError: the model was not built through ``make_layers`` (the cut did
            not apply), so the engine would silently run the full model or the wrong layers.
    """
    from vllm.model_executor.models.utils import PPMissingLayer
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    end = getattr(inner, "end_layer", None)
    built = [i for i, layer in enumerate(layers or ()) if not isinstance(layer, PPMissingLayer)]
    if end != last_layer + 1 or built != list(range(last_layer + 1)):
        raise EngineCompatibilityError(
            f"the score-only build of {type(model).__name__} did not stop after layer "
            f"{last_layer} (built layers {built[:3]}..{built[-3:]}, end_layer={end}); this "
            "model class builds its layers some other way: start it without last_layer")


def check_request(vllm_config, params) -> None:
    """Admission check of a score-only engine: one-token scoring requests within the cut only.

    Raises:
        VLLMValidationError: a generation request, or heads deeper than the cut; vLLM's front
            ends turn it into the request's error (HTTP 400 in its OpenAI server).
    """
    last_layer = last_layer_of(vllm_config)
    if last_layer is None:
        return
    from vllm.exceptions import VLLMValidationError
    try:
        spec = RequestSpec.from_params(getattr(params, "extra_args", None))
    except MalformedSpec as e:
        raise VLLMValidationError(str(e)) from None
    wants_logits = getattr(params, "logprobs", None) or getattr(params, "prompt_logprobs", None)
    if spec is None or getattr(params, "max_tokens", None) != 1 or wants_logits:
        raise VLLMValidationError(
            f"this engine is score-only (it computes layers 0..{last_layer} and has no valid "
            "logits): it accepts QRHead scoring requests with max_tokens=1 only, not generation "
            "or log-probabilities")
    beyond = beyond_last_layer(spec.heads, last_layer)
    if beyond is not None:
        raise VLLMValidationError(beyond)
