"""Finding head configs: shipped ones by name, files by path, defaults per bundled model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from qrhead_vllm import envs
from qrhead_vllm.errors import HeadConfigError
from qrhead_vllm.heads import HeadConfig, HeadScore, ModelFacts, Provenance

# The shipped default head set of each bundled model (configs/heads/<name>.yaml).
DEFAULT_HEADS = {
    "smollm2-135m": "smollm2-135m-hotpotqa",
    "gemma3-270m": "gemma3-270m-hotpotqa",
    "qwen2.5-coder-0.5b": "qwen2.5-coder-0.5b-hotpotqa",
    "qwen2.5-coder-1.5b": "qwen2.5-coder-1.5b-hotpotqa",
}

# The shipped citation heads of each bundled model: found by the answer span (the gold answer's
# tokens on the supporting paragraphs, docs/detection.md "Citation heads"), for attributing an
# answer to its documents. Pass the name as heads= where citations are scored.
CITATION_HEADS = {
    "smollm2-135m": "smollm2-135m-hotpotqa-cite",
    "qwen2.5-coder-0.5b": "qwen2.5-coder-0.5b-hotpotqa-cite",
    "qwen2.5-coder-1.5b": "qwen2.5-coder-1.5b-hotpotqa-cite",
}


def config_dir() -> Path:
    """The shipped configs (package data ``qrhead_vllm.configs``), or QRHEAD_CONFIG_DIR."""
    from qrhead_vllm import configs
    return envs.config_dir() or configs.path()


def shipped_head_configs() -> dict[str, Path]:
    """Name → path of every head config in ``configs/heads``."""
    return {p.stem: p for p in sorted((config_dir() / "heads").glob("*.yaml"))}


def load_head_config(name_or_path: str | os.PathLike) -> HeadConfig:
    """A shipped config by name, or any YAML/JSON file by path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml", ".json") or path.exists():
        return HeadConfig.load(path)
    shipped = shipped_head_configs()
    if str(name_or_path) not in shipped:
        raise HeadConfigError(f"no head config named {str(name_or_path)!r}; shipped: "
                              f"{sorted(shipped)}")
    return HeadConfig.load(shipped[str(name_or_path)])


def resolve_heads(heads: Any, model: str, facts: ModelFacts) -> HeadConfig | None:
    """Turn the ``heads=`` argument into a validated HeadConfig (None means all heads: ICR).

    Raises:
        HeadConfigError: unknown name, unreadable file, or a config for another model shape.
    """
    if isinstance(heads, str) and heads == "all":
        return None
    if heads is None:
        if model not in DEFAULT_HEADS:
            raise HeadConfigError(f"no default head config for model {model!r}: pass heads= "
                                  "(a config path, a shipped name, 'all', or [(layer, head), ...])")
        heads = DEFAULT_HEADS[model]
    if isinstance(heads, (list, tuple)):
        heads = _manual(heads, facts)
    elif not isinstance(heads, HeadConfig):
        heads = load_head_config(heads)
    heads.check_model(facts)
    return heads


def _manual(pairs, facts: ModelFacts) -> HeadConfig:
    try:
        entries = tuple(HeadScore(layer=int(l), head=int(h)) for l, h in pairs)
        return HeadConfig(name="manual", model=facts, heads=entries,
                          provenance=Provenance(source="manual"))
    except (ValueError, TypeError) as e:
        raise HeadConfigError(f"bad head list {pairs!r}: {e}") from e
