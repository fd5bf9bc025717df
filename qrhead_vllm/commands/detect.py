"""``qrhead detect``: find the retrieval heads of a model on labelled data (a Ray job).

Flags are generated from :class:`qrhead_vllm.detect.DetectConfig` (one flag per field, its
description as help). ``--config job.yaml`` reads a job file; flags given on the command line
override it. Example::

    qrhead detect --model smollm2-135m --data ../shared/data/hotpotqa/distractor-dev-70.jsonl \\
        --split detect --output configs/heads/smollm2-135m-hotpotqa.yaml
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from typing import Any

from pydantic import ValidationError

from qrhead_vllm.cli import add_log_level, apply_log_level
from qrhead_vllm.detect.config import DetectConfig
from qrhead_vllm.errors import QRHeadError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML/JSON job file with DetectConfig fields.")
    for name, info in DetectConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": info.description}
        kind, choices = _flag_type(info.annotation)
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = kind
            if choices:
                kwargs["choices"] = choices
            if info.is_required():
                kwargs["help"] += " (required unless in --config)"
        parser.add_argument(flag, **kwargs)
    add_log_level(parser)


def _flag_type(annotation) -> tuple[Any, tuple | None]:
    """The argparse type of a field annotation (Optional unwrapped; Literal gives choices)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return _flag_type(args[0])
    if typing.get_origin(annotation) is typing.Literal:
        return str, tuple(typing.get_args(annotation))
    if typing.get_origin(annotation) is dict:
        return json.loads, None
    return annotation, None


def config_from_args(args: argparse.Namespace) -> DetectConfig:
    overrides = {k: v for k, v in vars(args).items() if k not in ("config", "log_level")}
    if getattr(args, "config", None):
        return DetectConfig.from_file(args.config, **overrides)
    return DetectConfig(**overrides)


def run(args: argparse.Namespace) -> int:
    apply_log_level(args.log_level)
    try:
        cfg = config_from_args(args)
        from qrhead_vllm.detect.api import run_detection
        result = run_detection(cfg)
    except ValidationError as e:
        print(f"qrhead detect: invalid job settings:\n{e}", file=sys.stderr)
        return 2
    except QRHeadError as e:
        print(f"qrhead detect: {e}", file=sys.stderr)
        return 1
    hc = result.head_config
    print(f"{hc.name}: {len(result.records)} examples ({result.computed} computed, "
          f"{len(result.records) - result.computed} from checkpoint), recipe {cfg.recipe}")
    print("heads: " + ",".join(f"{h.layer}-{h.head}" for h in hc.heads))
    for kind, path in result.paths.items():
        print(f"{kind}: {path}")
    return 0
