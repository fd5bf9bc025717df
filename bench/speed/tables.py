"""Markdown tables of the speed report: targets, paired timings, memory, bf16."""

from __future__ import annotations

from bench.speed.timing import Ratio, Timings

MIB = 2 ** 20


def _at_most(x: float):
    return lambda r: r.median <= x


def _ratio_row(tm: Timings, num: str, den: str, figure: str, target: str, test,
               labels=None) -> tuple:
    return (figure, tm.ratio(num, den, labels), tm.ratio(num, den, labels, "cpu"),
            tm.best_ratio(num, den, labels), target, test)


def _tokens(tm: Timings, labels) -> str:
    return "/".join(str(i.tokens) for i in tm.items if i.label in labels)


def target_rows(run) -> list[tuple]:
    """(figure, wall ratio, CPU ratio, best-of-N ratio, target text, test) per figure."""
    rows, t = [], run.timings
    if "compare" in t:
        c = t["compare"]
        if run.cut and "full" in c.variants:
            last, layers = run.cut
            bound = 1.1 * (last + 1) / layers
            rows.append(_ratio_row(c, "early", "full", f"early exit: score-only engine (layers "
                                   f"0..{last}) / full model ({layers} layers), real + null",
                                   f"≤ 1.1 × {last + 1}/{layers} = {bound:.3f}",
                                   _at_most(bound)))
        rows.append(_ratio_row(c, "early", "real", "calibration overhead, with / without the "
                               "null pass (score-only engine, HotpotQA prompts)", "≤ 1.10",
                               _at_most(1.10)))
        if "reference" in c.variants:
            rows.append(_ratio_row(c, "reference", "early", "**reference algorithm / our vLLM "
                                   "path** (score-only engine), per query", "≥ 3",
                                   lambda r: r.median >= 3))
        rows.append(_ratio_row(c, "transformers", "early", "our transformers port / our vLLM "
                               "path (score-only engine), per query", "—", None))
    if "bf16" in t:
        rows.append(_ratio_row(t["bf16"], "early bf16", "early", "bf16 / fp32 score-only "
                               "engine, real + null", "—", None))
    if "overhead" in t:
        o = t["overhead"]
        hot = [i.label for i in o.items if i.label.startswith("hotpot")]
        long = [i.label for i in o.items if not i.label.startswith("hotpot")]
        for labels, what in ((hot, "HotpotQA prompts"), (long, "long prompt")):
            if labels:
                rows.append(_ratio_row(o, "capture", "plain", f"capture overhead, hook on / off "
                                       f"({what}, {_tokens(o, labels)} tokens)", "≤ 1.05",
                                       _at_most(1.05), labels))
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
        met = f"{yes(ok(w))} / {yes(ok(c))} / {yes(ok(b))}" if ok else "—"
        out.append(f"| {f} | {w} | {c} | {best:.3f} | {tgt} | {met} |")
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


def memory_table(rows: list[dict]) -> str:
    out = ["| tokens | capture measured MiB | capture from shapes MiB | reference recompute "
           "MiB | model KV cache MiB | capture / KV cache |", "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ref = f"{r['reference'] / MIB:.1f}" if "reference" in r else "not run"
        out.append(f"| {r['tokens']} | {r['ours'] / MIB:.2f} | {r['formula'] / MIB:.2f} | {ref} "
                   f"| {r['kv_cache'] / MIB:.0f} | {100 * r['ours'] / r['kv_cache']:.1f} % |")
    return "\n".join(out)


def engine_memory_table(rows: list[dict]) -> str:
    """Each engine's own tensors, as its worker counts them; relative to the full model."""
    base = rows[0]["weight_bytes"] + rows[0]["kv_cache_bytes"] if rows else 1
    out = ["| engine | dtype | attention layers | weights MiB | KV cache MiB | weights + KV MiB "
           "| vs full model |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        total = r["weight_bytes"] + r["kv_cache_bytes"]
        out.append(f"| {r['engine']} | {r['dtype']} | {r['attention_layers']} | "
                   f"{r['weight_bytes'] / MIB:.0f} | {r['kv_cache_bytes'] / MIB:.0f} | "
                   f"{total / MIB:.0f} | {total / base:.3f} |")
    return "\n".join(out)


def bf16_table(q) -> str:
    lo, hi = q.ndcg_interval
    return "\n".join([
        "| queries | max abs score diff | mean abs score diff | Kendall tau-b (mean / min) | "
        "identical rankings | same top document | nDCG@10 fp32 | nDCG@10 bf16 | bf16 − fp32 "
        "(95 % bootstrap) | unchanged within noise |", "|---:|---:|---:|---:|---:|---:|---:|---:|"
        "---:|---|",
        f"| {q.queries} | {q.max_abs_diff:.2e} | {q.mean_abs_diff:.2e} | {q.kendall_mean:.3f} / "
        f"{q.kendall_min:.3f} | {q.identical_rankings}/{q.queries} | {q.same_top1}/{q.queries} | "
        f"{q.ndcg_fp32:.1f} | {q.ndcg_bf16:.1f} | {q.ndcg_bf16 - q.ndcg_fp32:+.1f} "
        f"[{lo:+.1f}, {hi:+.1f}] | {'yes' if q.unchanged else '**no**'} |"])
