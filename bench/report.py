"""The bench's outputs: a markdown report (table, provenance, notes) and a PNG bar chart."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from bench.quality.metrics import METRICS

NAMES = {"ndcg@10": "nDCG@10", "mrr@10": "MRR@10", "recall@2": "Recall@2", "recall@5": "Recall@5",
         "mrr@10-l2": "MRR@10 (rel>=2)", "recall@20-l2": "R@20 (rel>=2)"}


def row_metrics(rows: Sequence["Row"]) -> tuple[str, ...]:
    """The metrics of a table: those of its first row, in their order."""
    return tuple(rows[0].scores) if rows else METRICS


@dataclass
class Row:
    """One method's mean metrics; ``draws`` holds per-draw metrics of averaged random rows."""

    label: str
    scores: dict[str, float]
    draws: list[tuple[int, dict[str, float]]] = field(default_factory=list)


def machine() -> str:
    """CPU model and cores from /proc/cpuinfo, the GPU if any, and the load when we started."""
    model, cores = platform.processor() or "unknown CPU", os.cpu_count()
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
        names = [l.split(":", 1)[1].strip() for l in info if l.startswith("model name")]
        model, cores = (names[0], len(names)) if names else (model, cores)
    except OSError:
        pass
    text = f"{model}, {cores} cores, {platform.system()} {platform.machine()}"
    import torch
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    if hasattr(os, "getloadavg"):      # the box may be shared: say how busy it was
        text += f", load average at start {os.getloadavg()[0]:.1f}"
    return text


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return sha + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def table(rows: Sequence[Row], first: str = "method") -> str:
    metrics = row_metrics(rows)
    head = f"| {first} | " + " | ".join(NAMES.get(m, m) for m in metrics) + " |"
    lines = [head, "|---" * (len(metrics) + 1) + "|"]
    for r in rows:
        lines.append(f"| {r.label} | " + " | ".join(f"{100 * r.scores[m]:.1f}" for m in metrics)
                     + " |")
    return "\n".join(lines)


def draws_table(rows: Sequence[Row]) -> str:
    per = [Row(f"{r.label.split(' (mean')[0]}, seed {seed}", s)
           for r in rows for seed, s in r.draws]
    return table(per, "draw") if per else ""


def markdown(title: str, facts: dict[str, str], rows: Sequence[Row], notes: Sequence[str],
             png_name: str | None, appendix: str) -> str:
    """The whole report: provenance list, table (percent), notes, per-draw table, chart."""
    out = [f"# {title}", "",
           "_Written by `bench/quality/quality.py`; rerun the command below rather than editing it._", ""]
    out += [f"- **{k}**: {v}" for k, v in facts.items()]
    out += ["", "All metrics in percent (ranx; nDCG graded as trec_eval).", "", table(rows)]
    if notes:
        out += ["", "Not in the table:"] + [f"- {n}" for n in notes]
    if any(r.draws for r in rows):
        out += ["", "Random head draws (each a separate seed; the table shows their mean):", "",
                draws_table(rows)]
    if png_name:
        out += ["", f"![{title}]({png_name})"]
    return "\n".join(out + ["", appendix.strip(), ""])


def provenance_table(lines: Sequence[dict], command: str, started: str,
                     facts: Sequence[str] = ()) -> str:
    """A speed bench's report: date, machine, commit, command (and ``facts``), then one table
    row per dict (its keys are the columns)."""
    cols = list(lines[0])
    head = [f"- **date**: {started}", f"- **machine**: {machine()}",
            f"- **commit**: {git_commit()}", f"- **command**: `{command}`", *facts, ""]
    table = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    table += ["| " + " | ".join(str(line[c]) for c in cols) + " |" for line in lines]
    return "\n".join(head + table) + "\n"


def bar_chart(rows: Sequence[Row], path: Path, title: str) -> None:
    """Grouped bars, one group per method; random rows get a min–max whisker over draws."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    metrics = row_metrics(rows)
    x = np.arange(len(rows))
    width = 0.8 / len(metrics)
    fig, ax = plt.subplots(figsize=(max(7, 1.3 * len(rows) + 2), 4.2))
    for i, m in enumerate(metrics):
        xs = x + (i - (len(metrics) - 1) / 2) * width
        vals = [100 * r.scores[m] for r in rows]
        ax.bar(xs, vals, width, label=NAMES.get(m, m))
        for xi, v, r in zip(xs, vals, rows):          # spread of the random draws
            if r.draws:
                got = [100 * s[m] for _, s in r.draws]
                ax.errorbar(xi, v, yerr=[[v - min(got)], [max(got) - v]], color="black",
                            capsize=2, linewidth=1)
    ax.set_xticks(x, [textwrap.fill(r.label, 18) for r in rows], fontsize=8)
    ax.set_ylabel("percent")
    ax.set_ylim(0, 105)
    ax.legend(ncol=len(metrics), fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0),
              frameon=False)
    fig.suptitle(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` quantile of already sorted values (nan when there are none): what
    the serve benches report as p50 / p95 / p99."""
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]
