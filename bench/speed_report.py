"""The speed bench's report: docs/speed.md (provenance, targets, tables) and speed_*.png."""

from __future__ import annotations

import datetime as dt
import os
import platform
from pathlib import Path

from bench.report import git_commit
from bench.speed_timing import Ratio, Timings

NOTES = Path(__file__).resolve().parent / "speed_notes.md"
MIB = 2 ** 20
GPU_COMMAND = "python bench/gpu_capture.py"
COLORS = {"real+null": "C0", "plain": "C1", "transformers": "C2"}   # same line, same colour


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


def target_rows(run) -> list[tuple[str, Ratio, Ratio, float, str, callable]]:
    """(figure, wall ratio, CPU ratio, best-of-N ratio, target text, test) per target."""
    rows, t = [], run.timings
    at_most = lambda x: lambda r: r.median <= x       # noqa: E731
    if "overhead" in t:
        o = t["overhead"]
        hot = [i.label for i in o.items if i.label.startswith("hotpot")]
        long = [i.label for i in o.items if not i.label.startswith("hotpot")]
        for labels, what in ((hot, "HotpotQA prompts"), (long, "long prompt")):
            if labels:
                tok = "/".join(str(i.tokens) for i in o.items if i.label in labels)
                rows.append((f"capture overhead, hook on / off ({what}, {tok} tokens)",
                             o.ratio("capture", "plain", labels),
                             o.ratio("capture", "plain", labels, "cpu"),
                             o.best_ratio("capture", "plain", labels), "≤ 1.05", at_most(1.05)))
    if "compare" in t:
        c = t["compare"]
        rows.append(("calibration overhead, with / without the null pass",
                     c.ratio("real+null", "real"), c.ratio("real+null", "real", kind="cpu"),
                     c.best_ratio("real+null", "real"), "≤ 1.10", at_most(1.10)))
        rows.append(("transformers reference port / our vLLM path, per query",
                     c.ratio("transformers", "real+null"),
                     c.ratio("transformers", "real+null", kind="cpu"),
                     c.best_ratio("transformers", "real+null"), "≥ 3",
                     lambda r: r.median >= 3))
    return rows


def targets_table(run) -> list[str]:
    rows = target_rows(run)
    if not rows:
        return []
    yes = lambda ok: "yes" if ok else "**no**"       # noqa: E731
    out = ["## Targets", "", "| figure | wall-time ratio | CPU-time ratio | best-of-N ratio | "
           "target | met (wall / CPU / best) |", "|---|---|---|---|---|---|"]
    for f, w, c, best, tgt, ok in rows:
        b = Ratio(best, best, best, 1)
        out.append(f"| {f} | {w} | {c} | {best:.3f} | {tgt} | {yes(ok(w))} / {yes(ok(c))} / "
                   f"{yes(ok(b))} |")
    return out + [""]


def timing_table(tm: Timings, ratios: dict[str, tuple[str, str]], hook: bool = False) -> str:
    """Median wall seconds per variant, then each ratio as wall and CPU medians of pairs; with
    ``hook``, the median milliseconds spent inside the capture hook per variant."""
    hooked = [v for v in tm.variants if hook and any(tm.extra.get("hook", {}).get(v, {}).values())]
    cols = [f"{v} s" for v in tm.variants] + [f"{r} (wall / CPU)" for r in ratios]
    cols += [f"hook ms, {v}" for v in hooked]
    out = ["| prompt | tokens | docs | " + " | ".join(cols) + " |",
           "|---" * (3 + len(cols)) + "|"]
    for item in tm.items:
        cells = [f"{tm.median(v, item.label):.2f}" for v in tm.variants]
        cells += [f"{tm.ratio(a, b, [item.label]).median:.3f} / "
                  f"{tm.ratio(a, b, [item.label], 'cpu').median:.3f}" for a, b in ratios.values()]
        cells += [f"{1e3 * tm.median(v, item.label, 'hook'):.1f}" for v in hooked]
        out.append(f"| {item.label} | {item.tokens} | {item.num_docs} | " + " | ".join(cells)
                   + " |")
    return "\n".join(out)


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


def memory_table(rows: list[dict]) -> str:
    out = ["| tokens | capture measured MiB | capture from shapes MiB | reference recompute "
           "MiB | model KV cache MiB | capture / KV cache |", "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ref = f"{r['reference'] / MIB:.1f}" if "reference" in r else "not run"
        out.append(f"| {r['tokens']} | {r['ours'] / MIB:.2f} | {r['formula'] / MIB:.2f} | {ref} "
                   f"| {r['kv_cache'] / MIB:.0f} | {100 * r['ours'] / r['kv_cache']:.1f} % |")
    return "\n".join(out)


LABELS = {"real+null": "vLLM + capture (real + null pass)", "plain": "vLLM, plain prefill",
          "transformers": "transformers reference port (real + null)"}


def write(run, out: Path, name: str = "speed", notes: Path | None = NOTES) -> Path:
    """Render ``out/<name>.md`` and its ``<name>_*.png``; returns the markdown's path."""
    out.mkdir(parents=True, exist_ok=True)
    a, t = run.args, run.timings
    lines = ["# Speed and memory", "",
             "_Written by `bench/speed.py`; rerun the command below rather than editing it._", "",
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
        lines += ["## Calibration and the reference port", "", "`real`: our vLLM path without "
                  "calibration; `real+null`: with the null pass (its prefix served from the "
                  "cache); `transformers`: the reference port (`TransformersBackend`, SDPA + "
                  "selected-head rows, stops after the last selected layer), real + null.", "",
                  timing_table(t["compare"], {"calibration": ("real+null", "real"),
                                              "transformers / vLLM": ("transformers", "real+null")},
                               hook=True), ""]
    for key, x, title in (("docs", "docs", f"documents cut to {a.doc_words} words"),
                          ("lengths", "tokens", "whole real documents")):
        if key in t and t[key].items:
            png = f"{name}_{key}.png"
            plot(t[key], x, out / png, f"Time per query vs {'documents' if x == 'docs' else 'context length'}"
                 f" ({title}), median of {a.scaling_reps}", LABELS)
            ratios = {"transformers / vLLM": ("transformers", "real+null")}
            if "plain" in t[key].variants:
                ratios["capture+null / plain"] = ("real+null", "plain")
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
                  "`bench/speed_report.py`. Reference: the original code's recompute (all "
                  "layers and heads, `repeat_kv`, dense causal mask, stacked L×H×T), measured "
                  "the same way.", f"Shape: {run.facts.get('memory shape', '')}.", "",
                  memory_table(run.memory), "", f"![memory]({name}_memory.png)", ""]
    lines += ["## GPU bench", "", "`bench/gpu_capture.py` (capture maths vs the reference "
              "recompute on Llama-3.1-8B- and 70B-shaped layers at 32K–128K tokens) has "
              f"**not been run on a GPU yet**. On a machine with a CUDA GPU: `{GPU_COMMAND}`; "
              "on a CPU, small: `python bench/gpu_capture.py --device cpu --tokens 4096`.", ""]
    if notes is not None and notes.exists():
        lines += [notes.read_text().strip(), ""]
    path = out / f"{name}.md"
    path.write_text("\n".join(lines))
    return path
