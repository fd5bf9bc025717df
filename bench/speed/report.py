"""The speed bench's report: docs/results/speed.md (provenance, targets, tables) and speed_*.png."""

from __future__ import annotations

import datetime as dt
import os
import platform
from pathlib import Path

from bench.report import git_commit
from bench.speed.tables import (bf16_table, engine_memory_table, memory_table, targets_table,
                                timing_table)
from bench.speed.timing import Timings

NOTES = Path(__file__).resolve().parent / "notes.md"
MIB = 2 ** 20
GPU_COMMAND = "python bench/speed/gpu_capture.py"
COLORS = {"early": "C0", "plain": "C1", "transformers": "C2", "reference": "C3"}   # same line, same colour


def capture_bytes(shape, tokens: int, span: int, block_size: int, elem: int = 4) -> int:
    """Peak bytes of the capture's own tensors for one request, from shapes (fp32 cache).

    Per captured layer: the gather copies the layer's blocks once (the permute+reshape after
    it is a view); then ``span_attention_rows`` holds key positions (int64), the causal mask
    (bool, n×T) and its output (H_sel×T), and loops over KV groups: a group of h heads holds
    its logits and their softmax (h×n×T each) and frees both before the next group, hence
    2·max(h)×n×T floats. Row sums of earlier layers (H_sel×T each) stay alive until the
    request ends.
    """
    padded = -(-tokens // block_size) * block_size
    keys = padded * shape.num_kv_heads * shape.head_dim * elem
    group = shape.num_heads // shape.num_kv_heads
    kept, peak = 0, 0
    for _, heads in sorted(shape.by_layer().items()):
        sizes = [sum(1 for x in heads if x // group == kv) for kv in sorted({x // group
                                                                            for x in heads})]
        loop = 2 * max(sizes)
        rows = (8 + span + 4 * len(heads) + 4 * loop * span + 4 * max(sizes)) * tokens
        peak = max(peak, kept + keys + rows)
        kept += 4 * len(heads) * tokens
    return peak


def machine() -> str:
    model, cores = platform.processor() or "unknown CPU", os.cpu_count()
    try:
        names = [l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text()
                 .splitlines() if l.startswith("model name")]
        model, cores = (names[0], len(names)) if names else (model, cores)
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return f"{model}, {cores} cores, {mem:.0f} GiB RAM, {platform.system()} {platform.machine()}"


def versions() -> str:
    out = []
    for name in ("vllm", "torch", "transformers"):
        try:
            out.append(f"{name} {__import__(name).__version__}")
        except ImportError:
            out.append(f"{name} absent")
    return ", ".join(out)


def plot(tm: Timings, x: str, path: Path, title: str, labels: dict[str, str]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    xs = [i.num_docs if x == "docs" else i.tokens for i in tm.items]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for v in tm.variants:
        ax.plot(xs, [tm.median(v, i.label) for i in tm.items], marker="o", label=labels[v],
                color=COLORS.get(v))
    ax.set_xlabel("documents per prompt" if x == "docs" else "prompt tokens")
    ax.set_ylabel("seconds per query")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def memory_plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for key, label in (("ours", "capture, measured"), ("formula", "capture, from shapes"),
                       ("reference", "reference recompute, measured"),
                       ("kv_cache", "model's KV cache (all layers)")):
        pts = [(r["tokens"], r[key] / MIB) for r in rows if key in r]
        ax.plot(*zip(*pts), marker="o" if key != "formula" else "x", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context tokens")
    ax.set_ylabel("MiB")
    ax.set_title("Peak extra memory per request (SmolLM2-135M shape, fp32)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


LABELS = {"early": "vLLM score-only engine + capture (real + null pass)",
          "plain": "vLLM full model, plain prefill",
          "transformers": "our transformers port (real + null)",
          "reference": "published algorithm, all L×H heads (real + null)"}
VARIANTS = ("`real`: score-only engine (layers up to the deepest selected head), real pass only; "
            "`early`: the same with the null pass (the fast path, what a user gets); `full`: "
            "the full-model engine, real + null; `transformers`: our port "
            "(`TransformersBackend`: SDPA + selected-head rows, stops after the deepest "
            "selected layer), real + null; `reference`: the published QRHead algorithm "
            "(`bench/speed/reference_baseline.py`: forward through every layer keeping all queries "
            "and keys, then all L×H heads' span rows recomputed with a dense causal mask, real "
            "+ null). All fp32 on the same cores.")


def write(run, out: Path, name: str = "speed", notes: Path | None = NOTES) -> Path:
    """Render ``out/<name>.md`` and its ``<name>_*.png``; returns the markdown's path."""
    out.mkdir(parents=True, exist_ok=True)
    a, t = run.args, run.timings
    lines = ["# Speed and memory", "",
             "_Written by `bench/speed/speed.py`; rerun the command below rather than editing it._", "",
             f"- **date**: {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
             f"- **machine**: {machine()}",
             f"- **command**: `{run.command}`",
             f"- **code**: commit {git_commit()}; {versions()}",
             f"- **model**: {a.model}, {a.dtype}, vLLM max_model_len {a.max_model_len}"
             + (f" (max_position_embeddings raised to {a.max_model_len}: past the model's "
                "trained positions the timings are valid, the scores are not)"
                if a.extend_context else "")
             + f", engine core {'in its own process' if a.multiprocess else 'in-process'},"
             " enforce_eager, prefix caching on and reset before every timed call"]
    lines += [f"- **{k}**: {v}" for k, v in run.facts.items()]
    lines += ["", "Every ratio is the median of paired ratios (same prompt, same repetition, "
              "variants back to back in rotating order; IQR = interquartile range of the "
              "pairs); targets are judged on it. Seconds are medians of wall time. CPU time = "
              "this process's user + system time, which includes the in-process engine: it "
              "does not grow while other processes hold the cores, but still counts OpenMP "
              "threads spinning at barriers. Best-of-N = median over prompts of min/min wall "
              "times (load only adds time: the closest estimate of an idle machine). Hook ms "
              "= wall time inside the capture hook's entry points (the per-layer lookup for "
              "ordinary requests; the capture's own work for scoring requests).", ""]
    lines += targets_table(run)
    if "overhead" in t:
        lines += ["## Capture overhead", "", "`plain`: ordinary requests (max_tokens=1, no "
                  "`extra_args[\"qrhead\"]`); `capture`: the same prefill as a scoring request "
                  "capturing the heads, result popped through `collective_rpc`. Same engine, "
                  "same prompt, no prefix-cache hits.", "",
                  timing_table(t["overhead"], {"capture / plain": ("capture", "plain")}, hook=True),
                  ""]
    if "compare" in t:
        lines += ["## Early exit, calibration and the baselines", "", VARIANTS, "",
                  timing_table(t["compare"], {
                      "early / full": ("early", "full"), "calibration": ("early", "real"),
                      "reference / early": ("reference", "early"),
                      "transformers / early": ("transformers", "early")}, hook=True), ""]
    if "calibration" in t:
        lines += ["## Calibration overhead by prompt length", "", "Score-only engine; `real`: "
                  "without the null pass; `early`: with it, real and null submitted in one "
                  "engine call (the default since issue 13); `early, 2 calls`: the null in a "
                  "second call after the real (before issue 13); `small blocks`: the same on a "
                  f"score-only engine with smaller KV blocks ({run.facts.get('KV block size')}"
                  "). Every null is served from the prefix cache up to the last full block "
                  "before the query span, so smaller blocks leave fewer document tokens to "
                  "recompute.", "",
                  timing_table(t["calibration"], {
                      "calibration": ("early", "real"),
                      "calibration, 2 calls": ("early, 2 calls", "real"),
                      "calibration, small blocks": ("early, small blocks", "real, small blocks"),
                      "small / default blocks, real": ("real, small blocks", "real"),
                      "small / default blocks, real + null": ("early, small blocks", "early")}),
                  ""]
    if run.engine_memory:
        lines += ["## Retriever memory with and without the unloaded layers", "", "Each "
                  "engine's own tensors as its worker counts them (`qrhead_memory`): weights "
                  "(tied embeddings once) and the KV cache, both engines sized for the same "
                  "tokens (`max_model_len` × `kv_cache_sequences`). The score-only engine "
                  "holds neither the weights nor the KV cache of the layers after its cut.", "",
                  engine_memory_table(run.engine_memory), ""]
    if "bf16" in t:
        lines += ["## bf16 vs fp32 (score-only engines)", "", "Speed: paired on the HotpotQA "
                  "prompts above.", "", timing_table(t["bf16"], {
                      "bf16 / fp32": ("early bf16", "early")}), ""]
    if run.bf16 is not None:
        lines += ["Scores on the evaluation split of the shared HotpotQA set (the heads were "
                  "detected on the other half); noise = the 95 % paired-bootstrap interval of "
                  "the per-query nDCG@10 difference (`bench/speed/bf16.py`).", "",
                  bf16_table(run.bf16), ""]
    for key, x, title in (("docs", "docs", f"documents cut to {a.doc_words} words"),
                          ("lengths", "tokens", "whole real documents")):
        if key in t and t[key].items:
            png = f"{name}_{key}.png"
            plot(t[key], x, out / png, f"Time per query vs {'documents' if x == 'docs' else 'context length'}"
                 f" ({title}), median of {a.scaling_reps}", LABELS)
            ratios = {"transformers / vLLM": ("transformers", "early")}
            if "reference" in t[key].variants:
                ratios["reference / vLLM"] = ("reference", "early")
            if "plain" in t[key].variants:
                ratios["score-only+null / full plain"] = ("early", "plain")
            lines += [f"## Scaling: {'documents' if x == 'docs' else 'context length'} ({title})",
                      "", timing_table(t[key], ratios), "", f"![{key}]({png})", ""]
    if run.skipped:
        lines += ["Not measured: " + "; ".join(run.skipped), ""]
    if run.memory:
        memory_plot(run.memory, out / f"{name}_memory.png")
        lines += ["## Peak extra memory of the capture", "", "Measured: peak bytes allocated by "
                  "the capture's own tensors (`gather_paged_keys` + `span_attention_rows` for "
                  "every captured layer of one request, rows kept to the end) from torch "
                  "profiler allocation events; formula: `capture_bytes` in "
                  "`bench/speed/report.py`. Reference: the original code's recompute (all "
                  "layers and heads, `repeat_kv`, dense causal mask, stacked L×H×T), measured "
                  "the same way.", f"Shape: {run.facts.get('memory shape', '')}.", "",
                  memory_table(run.memory), "", f"![memory]({name}_memory.png)", ""]
    lines += ["## GPU bench", "", "`bench/speed/gpu_capture.py` (capture maths vs the reference "
              "recompute on Llama-3.1-8B- and 70B-shaped layers at 32K–128K tokens) has "
              f"**not been run on a GPU yet**. On a machine with a CUDA GPU: `{GPU_COMMAND}`; "
              "on a CPU, small: `python bench/speed/gpu_capture.py --device cpu --tokens 4096`.", ""]
    if notes is not None and notes.exists():
        lines += [notes.read_text().strip(), ""]
    path = out / f"{name}.md"
    path.write_text("\n".join(lines))
    return path
