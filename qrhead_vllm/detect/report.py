"""What a detection run writes beside its HeadConfig: a heat map of the per-head scores and a
stability report (do two disjoint halves of the data pick the same heads?).

For ``configs/heads/x.yaml``: ``x.png`` and ``x.stability.json`` / ``x.stability.md``.
The paper's stability check (Table 6) compares the top-64 of three disjoint 128-example samples
and finds 50–57 shared; we report top-k and top-4k overlaps of two halves, with the overlap
two random lists would have for scale.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

from qrhead_vllm.detect.config import DetectConfig
from qrhead_vllm.detect.recipes import reduce_scores, spearman, top_overlap
from qrhead_vllm.heads import HeadConfig


def write_reports(cfg: DetectConfig, hc: HeadConfig, records: list[dict]) -> dict[str, Path]:
    """Write the heat map and the stability report next to ``cfg.output``."""
    out = Path(cfg.output)
    paths = {"heatmap": plot_heatmap(hc, out.with_suffix(".png"))}
    report = stability(records, cfg.recipe, hc.model.num_layers * hc.model.num_heads,
                       cfg.top_k, cfg.stability_seed)
    report["name"] = hc.name
    report["recipe"] = cfg.recipe
    report["span"] = cfg.span
    json_path = out.with_suffix(".stability.json")
    json_path.write_text(json.dumps(report, indent=1) + "\n")
    md_path = out.with_suffix(".stability.md")
    md_path.write_text(stability_markdown(report, hc))
    paths.update(stability_json=json_path, stability_md=md_path)
    return paths


def halves(records: list[dict], seed: int) -> tuple[list[dict], list[dict]]:
    """Two disjoint halves by a seeded shuffle of the sorted example ids."""
    ids = sorted(r["qid"] for r in records)
    random.Random(seed).shuffle(ids)
    first = set(ids[: len(ids) // 2])
    return ([r for r in records if r["qid"] in first],
            [r for r in records if r["qid"] not in first])


def stability(records: list[dict], recipe: str, num_heads_total: int, top_k: int,
              seed: int) -> dict:
    """Top-k overlap and rank correlation of the head scores of two disjoint halves."""
    a, b = halves(records, seed)
    report = {"examples": [len(a), len(b)], "seed": seed, "total_heads": num_heads_total}
    if not a or not b:
        report["note"] = "too few examples for two halves"
        return report
    sa, sb = reduce_scores(a, recipe), reduce_scores(b, recipe)
    report["overlap"] = {}
    for k in sorted({top_k, 4 * top_k}):
        k = min(k, num_heads_total)
        report["overlap"][str(k)] = {
            "shared": top_overlap(sa, sb, k),
            "random_expected": round(k * k / num_heads_total, 2),
        }
    report["spearman"] = round(spearman(sa, sb), 4)
    full = reduce_scores(records, recipe)
    report["full_vs_half_topk"] = [top_overlap(full, sa, top_k), top_overlap(full, sb, top_k)]
    return report


def stability_markdown(report: dict, hc: HeadConfig) -> str:
    lines = [f"# Stability of `{hc.name}`", "",
             f"Recipe `{report['recipe']}`, span `{report.get('span', 'question')}`; "
             f"two disjoint halves of {sum(report['examples'])} "
             f"examples ({report['examples'][0]} + {report['examples'][1]}, seed "
             f"{report['seed']}); {report['total_heads']} heads in all.", ""]
    if "overlap" not in report:
        return "\n".join(lines + [report.get("note", ""), ""])
    lines += ["| top-k | shared by both halves | expected for random lists |", "|---|---|---|"]
    for k, v in report["overlap"].items():
        lines.append(f"| {k} | {v['shared']} | {v['random_expected']} |")
    lines += ["", f"Spearman correlation of the two halves' head scores: {report['spearman']}.",
              f"Top-{len(hc.heads)} of all examples shared with each half's top-{len(hc.heads)}: "
              f"{report['full_vs_half_topk'][0]} and {report['full_vs_half_topk'][1]}.", ""]
    return "\n".join(lines)


def plot_heatmap(hc: HeadConfig, path: Path) -> Path:
    """Layers × heads image of the score table; the selected heads are outlined."""
    import matplotlib

    matplotlib.use("Agg")  # headless: Ray workers and CI have no display
    import matplotlib.pyplot as plt

    table = np.asarray(hc.score_table)
    layers, heads = table.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * heads + 2), max(4.0, 0.22 * layers + 1.5)))
    im = ax.imshow(table, aspect="auto", cmap="viridis", origin="lower")
    for rank, h in enumerate(hc.heads, start=1):
        ax.add_patch(plt.Rectangle((h.head - 0.5, h.layer - 0.5), 1, 1, fill=False,
                                   edgecolor="red", linewidth=1.2))
        if rank <= 16:
            ax.text(h.head, h.layer, str(rank), ha="center", va="center", fontsize=6,
                    color="white")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(f"{hc.name}: {hc.provenance.recipe} score, {hc.provenance.span or 'question'} "
                 f"span\n(top-{len(hc.heads)} outlined, "
                 f"{hc.provenance.num_examples} examples)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path
