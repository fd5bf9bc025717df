"""How many of the top-k heads do head sets detected on different data share?

    python scripts/head_overlap.py smollm2-135m-hotpotqa smollm2-135m-musique \\
        smollm2-135m-hotpotqa-musique --k 16 --out docs/results/detection-transfer.md

Each argument is a shipped head-config name or a path. The overlap of two sets is computed on
their full score tables (``score_table``), so it also works for k larger than the lists kept.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

from qrhead_vllm.detect.recipes import spearman, top_overlap
from qrhead_vllm.head_registry import load_head_config


def overlap_markdown(names: list[str], ks: list[int]) -> str:
    configs = [load_head_config(n) for n in names]
    tables = [np.asarray(c.score_table, dtype=float).ravel() for c in configs]
    total = tables[0].size
    lines = ["| head set | recipe | detection data | examples |", "|---|---|---|---|"]
    for c in configs:
        p = c.provenance
        data = " + ".join(Path(d).name for d in str(p.dataset or "-").split(","))
        lines.append(f"| `{c.name}` | {p.recipe} | {data} | {p.num_examples} |")
    head = "| pair | " + " | ".join(f"top-{k} shared" for k in ks) + " | Spearman |"
    lines += ["", head, "|---" * (len(ks) + 2) + "|"]
    for (a, ta), (b, tb) in itertools.combinations(zip(configs, tables), 2):
        cells = [f"{top_overlap(ta, tb, k)} / {k}" for k in ks]
        lines.append(f"| `{a.name}` vs `{b.name}` | " + " | ".join(cells)
                     + f" | {spearman(ta, tb):.3f} |")
    lines += ["", "Two random top-k lists of these " + str(total) + " heads would share "
              + ", ".join(f"{k * k / total:.1f} (k={k})" for k in ks) + " on average."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("configs", nargs="+")
    p.add_argument("--k", type=int, nargs="+", default=[16, 64])
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    text = overlap_markdown(args.configs, args.k)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
