"""What decode-time capture (citations) costs per output token, side by side in one run.

    python bench/speed/decode_capture.py                          # fp32 and bf16, 1 and 4 at a time
    python bench/speed/decode_capture.py --dtypes float32 --prompts 2 --reps 2 --tokens 32

For each dtype one ``AsyncLLM`` (the Serve app's engine client: full model, prefix caching on)
generates greedily after 20-passage TREC DL19 prompts (BM25 top-20, ~1.5-2.5K SmolLM2 tokens),
through ``AsyncVLLMBackend.generate_scored`` with the model's shipped heads. Per prompt and
repetition, back to back in rotating order (the prefix cache is left on: after the first call a
prompt's prefill is mostly a cache hit, so the run is spent decoding; decode steps are the same
either way):

    plain       engine.generate, no spec (what a chat costs today)
    scores      a spec without doc_spans: prefill capture, decode steps skip it
    citations   a spec with doc_spans: prefill capture and per-token document mass

``concurrency`` c runs c requests of the same variant at once (different prompts), so a decode
step batches c capturing requests. Time per output token (TPOT) of a request is (last output -
first output) / (tokens - 1), medians over requests; the issue's bar is citations <= 1.05 x
plain.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))   # `python bench/speed/decode_capture.py`

from bench.report import now, provenance_table  # noqa: E402
from bench.speed.timing import rotated  # noqa: E402

BAR = 1.05          # issue 26: time per output token with citations <= 1.05 x plain
VARIANTS = ("plain", "scores", "citations")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--prompts", type=int, default=4, help="20-passage DL19 prompts")
    p.add_argument("--tokens", type=int, default=64, help="output tokens per request")
    p.add_argument("--concurrency", default="1,4")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--json", type=Path, help="write the raw rows here")
    p.add_argument("--out", type=Path, help="write the markdown report here too")
    return p.parse_args(argv)


def dl19_prompts(ranker, count: int):
    """The first ``count`` DL19 queries with their BM25 top-20 as scoring prompts."""
    from qrhead_vllm.datasets import load_shared
    examples = [e for e in load_shared("dl19") if len(e.documents) >= 20][:count]
    return [ranker.prepare(e.query, list(e.documents[:20]))[1].real for e in examples]


def start_engine(model_path: str, dtype: str, max_model_len: int, sequences: int):
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM
    from qrhead_vllm.integration.vllm.engine_args import engine_env, engine_kwargs
    kwargs = engine_kwargs(model_path, dtype, max_model_len=max_model_len,
                           kv_cache_sequences=sequences)
    with engine_env():
        return AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))


async def one(backend, prompt, heads, variant: str, tokens: int) -> dict:
    """Generate ``tokens`` greedy tokens; seconds per output token after the first."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind
    params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True,
                            output_kind=RequestOutputKind.DELTA)
    stamps = []
    if variant == "plain":
        stream = backend.engine.generate({"prompt_token_ids": list(prompt.token_ids)}, params,
                                         request_id=f"plain-{time.time_ns()}")
    else:
        stream = backend.generate_scored(prompt, params, heads, decode=variant == "citations")
    async for _ in stream:
        stamps.append(time.perf_counter())
    if variant != "plain":
        await stream.prefill()
        if variant == "citations":
            await stream.decode_mass()
    return {"tpot_s": (stamps[-1] - stamps[0]) / max(len(stamps) - 1, 1)}


async def bench_engine(args, dtype: str) -> list[dict]:
    from qrhead_vllm.head_registry import resolve_heads
    from qrhead_vllm.integration.vllm.backend import AsyncVLLMBackend
    from qrhead_vllm.models import resolve_model
    from qrhead_vllm.ranker import QRHeadRanker
    model = resolve_model(args.model)
    levels = [int(c) for c in args.concurrency.split(",")]
    engine = start_engine(model.path, dtype, args.max_model_len, max(levels) + 1)
    try:
        backend = AsyncVLLMBackend(engine, model.path, model.model_id)
        ranker = QRHeadRanker(args.model, backend=backend)
        heads = tuple(resolve_heads(None, args.model, backend.facts).pairs)
        prompts = dl19_prompts(ranker, args.prompts)
        for variant in VARIANTS:                                      # warm-up, not recorded
            await one(backend, prompts[0], heads, variant, 4)
        rows = []
        for c in levels:
            for rep in range(args.reps):
                for k in range(len(prompts)):
                    batch = [prompts[(k + j) % len(prompts)] for j in range(c)]
                    for variant in rotated(list(VARIANTS), rep + k):
                        got = await asyncio.gather(*(one(backend, p, heads, variant, args.tokens)
                                                     for p in batch))
                        rows += [{"dtype": dtype, "concurrency": c, "rep": rep, "prompt": k,
                                  "tokens": p.num_tokens, "docs": len(p.doc_spans),
                                  "heads": len(heads), "variant": variant, **g}
                                 for p, g in zip(batch, got)]
                    print(f"[{dtype} c={c}] rep {rep} prompt {k}: " + ", ".join(
                        f"{r['variant']} {r['tpot_s'] * 1000:.1f} ms" for r in rows[-3 * c::c]),
                        file=sys.stderr, flush=True)
        return rows
    finally:
        engine.shutdown()


def summary(rows: list[dict]) -> list[dict]:
    """One line per (dtype, concurrency): medians over prompts and repetitions."""
    out = []
    for dtype, c in sorted({(r["dtype"], r["concurrency"]) for r in rows}):
        sel = [r for r in rows if (r["dtype"], r["concurrency"]) == (dtype, c)]
        med = {v: statistics.median(r["tpot_s"] for r in sel if r["variant"] == v)
               for v in VARIANTS}
        ratio = med["citations"] / med["plain"]
        out.append({"dtype": dtype, "concurrent requests": c,
                    "prompt tokens": f"{min(r['tokens'] for r in sel)}–"
                                     f"{max(r['tokens'] for r in sel)}",
                    "TPOT plain": f"{med['plain'] * 1000:.1f} ms",
                    "TPOT scores": f"{med['scores'] * 1000:.1f} ms",
                    "TPOT citations": f"{med['citations'] * 1000:.1f} ms",
                    "citations / plain": f"{ratio:.3f}",
                    "bar (<= 1.05) met": "yes" if ratio <= BAR else "**no**"})
    return out


def markdown(rows: list[dict], command: str, started: str) -> str:
    return provenance_table(summary(rows), command, started, [
        f"- **heads**: {rows[0]['heads']} (shipped), documents per prompt: {rows[0]['docs']}"])


def main(argv=None) -> None:
    args = parse_args(argv)
    command = "python bench/speed/decode_capture.py " + shlex.join(argv or sys.argv[1:])
    started = now()
    rows = []
    for dtype in args.dtypes.split(","):
        rows += asyncio.run(bench_engine(args, dtype))
        if args.json:                      # after each engine: a cut-short run keeps its rows
            args.json.write_text(json.dumps(rows, indent=1))
    report = markdown(rows, command.strip(), started)
    if args.out:
        args.out.write_text(report)
    print(report)


if __name__ == "__main__":
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    main()
