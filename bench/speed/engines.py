"""The speed bench's engines and the timed variants that run on them.

Every vLLM engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0`` unless
``--multiprocess``), so CPU time covers it and the capture hook can be timed; the capture store
keeps each engine's layers apart. Engines are sized by what they need (``engine_kwargs``: the
model, ``max_model_len`` and ``kv_cache_sequences``), never by a fraction of the box.

    full     fp32, the whole model (what every scoring engine was before issue 13)
    early    fp32, score-only: layers 0..deepest selected layer only (the fast path)
    bf16     bf16, score-only (the ``bf16`` section only)
    port     our transformers port (selected heads, stops after the deepest one)
    ref      the published algorithm (bench/speed/reference_baseline.py)
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from bench.speed.prompts import Item
from qrhead_vllm.errors import HeadConfigError

# Used when the model has no shipped head config: 16 heads over 10 layers and all 3 KV groups.
FALLBACK_HEADS = [(7, 7), (8, 0), (14, 3), (15, 6), (17, 0), (17, 3), (17, 4), (18, 6),
                  (18, 7), (20, 3), (21, 7), (21, 8), (22, 4), (22, 7), (23, 2), (23, 7)]


@dataclass
class Engines:
    full: object                 # QRHeadRanker on the whole model (also builds the prompts)
    early: object                # QRHeadRanker on the score-only engine
    port: object | None          # TransformersBackend
    reference: object | None     # ReferenceAlgorithm
    bf16: object | None = None   # QRHeadRanker, score-only, bf16
    small_blocks: object | None = None   # QRHeadRanker, score-only, --calibration-block-size

    def close(self) -> None:
        for ranker in (self.full, self.early, self.bf16, self.small_blocks):
            if ranker is not None:
                ranker.close()
        for other in (self.port, self.reference):
            if other is not None:
                other.close()


def vllm_ranker(args, dtype: str, score_only: bool, block_size: int | None = None):
    """A QRHeadRanker on a new in-process engine (the model's shipped heads, else a fallback)."""
    from qrhead_vllm.ranker import QRHeadRanker
    kwargs = dict(max_model_len=args.max_model_len, kv_cache_sequences=args.kv_cache_sequences,
                  backend="vllm", dtype=dtype, score_only=score_only)
    if block_size or args.block_size:
        kwargs["block_size"] = block_size or args.block_size
    if args.extend_context:
        kwargs["hf_overrides"] = {"max_position_embeddings": args.max_model_len}
    try:
        return QRHeadRanker(args.model, heads=args.heads, **kwargs)
    except HeadConfigError:
        if args.heads is not None:
            raise
        return QRHeadRanker(args.model, heads=FALLBACK_HEADS, **kwargs)


def start_engines(args, facts: dict, bf16: bool, reference: bool,
                  small_blocks: int | None = None, port: bool = True) -> Engines:
    """Both fp32 vLLM engines, the port and the reference baseline (each unless left out: a
    1.5B copy of the weights apiece), the bf16 engine, and a score-only engine with
    ``small_blocks``-token KV blocks."""
    if not args.multiprocess:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # 3-5× faster start
    from bench.speed.reference_baseline import ReferenceAlgorithm
    from qrhead_vllm.models import resolve_model
    from qrhead_vllm.engines import make_backend
    start = time.perf_counter()
    full = vllm_ranker(args, args.dtype, score_only=False)
    facts["vLLM engine start"] = f"{time.perf_counter() - start:.0f} s"
    early = vllm_ranker(args, args.dtype, score_only=True)
    ported = make_backend("transformers", args.model, args.dtype) if port else None
    if ported is not None:                      # prompts were checked against vLLM's length
        ported.max_model_len = full.backend.max_model_len
    model = resolve_model(args.model)
    ref = ReferenceAlgorithm(model.path, model.model_id, args.dtype) if reference else None
    engines = Engines(full, early, ported, ref,
                      vllm_ranker(args, "bfloat16", score_only=True) if bf16 else None,
                      vllm_ranker(args, args.dtype, True, small_blocks) if small_blocks else None)
    facts["KV block size"] = (f"{early.backend.llm.llm_engine.vllm_config.cache_config.block_size}"
                              + (f" ({small_blocks} for the `block {small_blocks}` variants)"
                                 if small_blocks else ""))
    pairs = full.head_pairs
    facts["heads"] = (full.heads.name if full.heads else "all") + \
        f" ({len(pairs)} heads in {len({l for l, _ in pairs})} layers)"
    facts["score-only engine"] = (f"layers 0..{early.backend.last_layer} of "
                                  f"{full.backend.facts.num_layers}")
    import torch
    facts["torch threads in this process"] = str(torch.get_num_threads())
    return engines


def engine_memory(engines: Engines) -> list[dict]:
    """What each vLLM engine holds (its worker's own count: layers, weights, KV cache)."""
    rows = []
    for name, ranker in (("full model", engines.full), ("score-only", engines.early),
                         ("score-only, bf16", engines.bf16)):
        if ranker is not None:
            [mem] = ranker.backend.llm.collective_rpc("qrhead_memory")
            rows.append({"engine": name, "dtype": str(ranker.backend.llm.llm_engine
                                                      .model_config.dtype).removeprefix("torch."),
                         **mem})
    return rows


def attention_isas(ranker) -> set[str]:
    """The CPU attention ISA vLLM picked for the engine's layers (``vec`` / ``amx``; ``None``
    off CPU), asked of its workers."""
    return {isa for reply in ranker.backend.llm.collective_rpc(_layer_isas) for isa in reply}


def _layer_isas(worker) -> list[str]:
    context = worker.model_runner.compilation_config.static_forward_context
    return sorted({str(getattr(layer, "isa", None)) for layer in context.values()
                   if hasattr(layer, "kv_cache") and hasattr(layer, "impl")})


class HookTimer:
    """Wall time spent inside the capture hook's entry points (in-process engines only: they run
    in this process). Ordinary requests show the lookup they pay; scoring requests the
    capture's own work (gather, self-check, softmax rows), separated from the load's noise."""

    def __init__(self):
        from qrhead_vllm.integration.vllm.capture import VLLMCapture as CaptureStore
        self.seconds = 0.0
        for name in ("begin_step", "on_attention", "end_step"):
            setattr(CaptureStore, name, self._timed(getattr(CaptureStore, name)))

    def _timed(self, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
        return timed

    def take(self) -> dict[str, float]:
        seconds, self.seconds = self.seconds, 0.0
        return {"hook": seconds}


def _fresh(ranker, hook) -> None:
    """Empty the engine's prefix cache before a timed call (no call hits another's blocks)."""
    if not ranker.backend.llm.reset_prefix_cache():
        raise RuntimeError("vLLM refused to reset the prefix cache")
    hook()                              # forget hook time spent outside this call


def _no_hits(out) -> None:
    if out.num_cached_tokens:           # a hit would make this prefill cheaper than its twin
        raise RuntimeError(f"unexpected prefix-cache hit of {out.num_cached_tokens} tokens")


def variants(engines: Engines, timer: HookTimer | None) -> dict:
    """Callables timing one item each; every vLLM one starts from an empty prefix cache."""
    from vllm import SamplingParams
    from qrhead_vllm.integration.vllm.backend import merge_worker_results, scoring_request
    hook = timer.take if timer else dict
    plain_params = SamplingParams(max_tokens=1, temperature=0.0)

    def plain(item: Item):                       # an ordinary request, full model, no capture
        _fresh(engines.full, hook)
        [out] = engines.full.backend.llm.generate(
            [{"prompt_token_ids": list(item.request.real.token_ids)}], plain_params,
            use_tqdm=False)
        _no_hits(out)
        return hook()

    def capture(item: Item):                     # the same prefill as a scoring request
        _fresh(engines.full, hook)
        llm = engines.full.backend.llm
        prompt, params, key = scoring_request(item.request.real, item.request.heads)
        [out] = llm.generate([prompt], params, use_tqdm=False)
        _no_hits(out)
        replies = llm.collective_rpc("qrhead_pop", args=([key],))
        merge_worker_results(replies, key, len(item.request.heads))  # raises if it is missing
        return hook()

    def scoring(ranker, null: bool, one_call: bool = True):
        def run(item: Item):
            _fresh(ranker, hook)
            ranker.backend.one_call = one_call
            try:
                [mass] = ranker.backend.attention_mass([item.request if null else
                                                        item.without_null()])
            finally:
                ranker.backend.one_call = True
            if null and not mass.null_cached_tokens:
                raise RuntimeError("the null pass missed the prefix cache")
            return hook()
        return run

    def unhooked(backend):              # transformers backends: nothing to reset or time
        def run(item: Item):
            backend.attention_mass([item.request])
        return run

    out = {"plain": plain, "capture": capture, "full": scoring(engines.full, True),
           "real": scoring(engines.early, False), "early": scoring(engines.early, True),
           "early, 2 calls": scoring(engines.early, True, one_call=False)}
    if engines.port is not None:
        out["transformers"] = unhooked(engines.port)
    if engines.reference is not None:
        out["reference"] = unhooked(engines.reference)
    if engines.bf16 is not None:
        out["early bf16"] = scoring(engines.bf16, True)
    if engines.small_blocks is not None:
        out["real, small blocks"] = scoring(engines.small_blocks, False)
        out["early, small blocks"] = scoring(engines.small_blocks, True)
    return out
