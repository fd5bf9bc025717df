"""``qrhead heads``: the shipped head sets, or one of them as a layers × heads grid.

``qrhead heads`` prints one line per shipped set (``configs/heads/*.yaml``, or
``QRHEAD_CONFIG_DIR``): name, model, number of heads, how it was made (the paper's released list
or our detection, and the recipe), the detection data and the bundled model it is the default
of (its scores, or its citations). ``qrhead heads NAME`` (or a path to a head config file)
prints the model's layers × heads with the selected heads marked, the heads best first, and
where the heat map of its detection scores is: beside the yaml in a checkout; the wheel ships
only the yaml files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qrhead_vllm.errors import HeadConfigError
from qrhead_vllm.head_registry import (CITATION_HEADS, DEFAULT_HEADS, load_head_config,
                                       shipped_head_configs)
from qrhead_vllm.heads import HeadConfig

EXIT_USER_ERROR = 2
SELECTED, OTHER = "#", "."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?",
                        help="a shipped head set (see the list without it) or a head config file")


def run(args: argparse.Namespace) -> int:
    shipped = shipped_head_configs()
    if args.name is None:
        print(listing({name: load_head_config(path) for name, path in shipped.items()}))
        return 0
    path = shipped.get(args.name) or Path(args.name)
    if not path.exists():
        return _fail(f"no head set named {args.name!r}; shipped: {', '.join(shipped)} "
                     "(or give the path of a head config file)")
    try:
        config = load_head_config(path)
    except HeadConfigError as e:
        return _fail(str(e))
    print(describe(config, heat_map_line(config, path, shipped=args.name in shipped)))
    return 0


def _fail(message: str) -> int:
    print(f"qrhead heads: error: {message}", file=sys.stderr)
    return EXIT_USER_ERROR


def listing(configs: dict[str, HeadConfig]) -> str:
    """One row per head set, with the bundled model it is the default of (for scores, or for
    citations)."""
    defaults = {heads: model for model, heads in DEFAULT_HEADS.items()}
    defaults |= {heads: f"{model} (citations)" for model, heads in CITATION_HEADS.items()}
    rows = [("name", "model", "heads", "made by", "data", "default for")]
    rows += [(name, c.model.model_id, str(len(c.heads)), made_by(c), data_name(c),
              defaults.get(name, "")) for name, c in configs.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines + ["", "qrhead heads NAME shows one as a layers x heads grid"])


def made_by(config: HeadConfig) -> str:
    """e.g. "paper, ndcg" or "detected, mass" (the recipe: docs/method.md §1.2)."""
    p = config.provenance
    return ", ".join(filter(None, [p.source, p.recipe]))


def data_name(config: HeadConfig) -> str:
    """The detection data files by name (the provenance keeps their paths)."""
    dataset = config.provenance.dataset or ""
    return "+".join(Path(part.split()[-1]).name for part in dataset.split(",") if part.strip())


def describe(config: HeadConfig, heat_map: str) -> str:
    """Header, grid, the heads best first, and the heat-map line."""
    m = config.model
    header = (f"{config.name}: {m.model_id}, {m.num_layers} layers x {m.num_heads} heads, "
              f"{len(config.heads)} selected ({made_by(config)}"
              f"{', on ' + data_name(config) if data_name(config) else ''})")
    best = ", ".join(f"{h.layer}-{h.head}" + (f" ({h.score:.4g})" if h.score is not None else "")
                     for h in config.heads)
    return "\n".join([header, "", grid(config), "",
                      f"selected ({SELECTED}), best first, layer-head (score): {best}", heat_map])


def grid(config: HeadConfig) -> str:
    """Rows = layers, columns = query heads, selected heads ``#``; the head index is written
    above its column (tens on a row of their own past 10 heads)."""
    m = config.model
    chosen = set(config.pairs)
    units = "".join(str(h % 10) for h in range(m.num_heads))
    lines = [f"{'layer/head':>10}  {units}"]
    if m.num_heads > 10:
        tens = "".join(str(h // 10) if h % 10 == 0 else " " for h in range(m.num_heads))
        lines.insert(0, f"{'':>10}  {tens.rstrip()}")
    for layer in range(m.num_layers):
        cells = "".join(SELECTED if (layer, h) in chosen else OTHER for h in range(m.num_heads))
        lines.append(f"{layer:>10}  {cells}")
    return "\n".join(lines)


def heat_map_line(config: HeadConfig, path: Path, shipped: bool) -> str:
    """Where the heat map of the detection scores is (``<name>.png`` beside the yaml), or why
    there is none here."""
    png = path.with_suffix(".png")
    if png.exists():
        return f"heat map: {png}"
    if config.score_table is None:
        return "heat map: none (the list was released without per-head scores)"
    if shipped:       # the wheel's package data holds only the yaml files (pyproject.toml)
        return (f"heat map: not shipped in the wheel (configs/heads/{png.name} in the source "
                "repository)")
    return f"heat map: none beside {path}"
