"""HeadConfig: the typed, versioned list of retrieval heads that serving loads.

Written by the detection job (or converted from the paper's released lists), read by the Python
API, the vLLM plugin and the Serve app. YAML and JSON round-trip; writes are atomic.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from qrhead_vllm.errors import HeadConfigError

logger = logging.getLogger(__name__)
SCHEMA_VERSION = 1
# Which tokens' attention detection scored: the question (retrieval heads, what /v1/rerank
# reads) or the gold answer (citation heads). qrhead_vllm.detect.spans builds each.
SpanName = Literal["question", "answer"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())


class ModelFacts(_Frozen):
    """The architecture facts a head list is only meaningful for."""

    model_id: str = Field(description="Hub id or name of the model the heads were found on.")
    revision: str | None = Field(None, description="Model revision / file the heads were found on.")
    architecture: str = Field(description="HF architecture class, e.g. LlamaForCausalLM.")
    num_layers: int = Field(gt=0, description="Number of decoder layers.")
    num_heads: int = Field(gt=0, description="Query heads per layer.")
    num_kv_heads: int = Field(gt=0, description="Key/value heads per layer (GQA).")
    head_dim: int = Field(gt=0, description="Dimension of one attention head.")

    @classmethod
    def from_hf_config(cls, config: Any, model_id: str, revision: str | None = None) -> "ModelFacts":
        """Facts from a transformers ``PretrainedConfig`` (text config for multimodal models)."""
        cfg = getattr(config, "text_config", None) or config
        heads = cfg.num_attention_heads
        return cls(model_id=model_id, revision=revision,
                   architecture=(getattr(config, "architectures", None) or ["unknown"])[0],
                   num_layers=cfg.num_hidden_layers, num_heads=heads,
                   num_kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
                   head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)


class HeadScore(_Frozen):
    """One selected head: 0-indexed layer and 0-indexed *query* head."""

    layer: int = Field(ge=0, description="0-indexed decoder layer.")
    head: int = Field(ge=0, description="0-indexed query head within the layer.")
    score: float | None = Field(None, description="Detection score (higher is better), if known.")


class Provenance(_Frozen):
    """Where a head list came from, enough to reproduce it."""

    source: Literal["paper", "detected", "manual"] = Field(description="How the list was made.")
    reference: str | None = Field(None, description="Paper/repo file for released lists.")
    recipe: Literal["mass", "ndcg", "contrast"] | None = Field(
        None, description="Detection recipe (docs/method.md §1.2).")
    span: SpanName | None = Field(
        None, description="Detection span: 'question' (retrieval heads) or 'answer' (citation "
                          "heads); absent in lists made before the choice existed: question.")
    dataset: str | None = Field(None, description="Detection data path or name.")
    dataset_sha256: str | None = Field(None, description="SHA-256 of the detection data file(s).")
    num_examples: int | None = Field(None, ge=0, description="Examples used for detection.")
    seed: int | None = Field(None, description="Seed for document shuffling / splits.")
    engine: str | None = Field(None, description="Backend that ran detection (vllm/transformers).")
    engine_version: str | None = Field(None, description="Version of that backend.")
    created: str | None = Field(None, description="ISO date the list was written.")
    notes: str | None = Field(None, description="Free text: splits, options, caveats.")


class HeadConfig(_Frozen):
    """An ordered list of retrieval heads for one model, with provenance."""

    schema_version: Literal[1] = Field(SCHEMA_VERSION, description="Format version of this file.")
    name: str = Field(description="Short name of the head set, e.g. smollm2-135m-hotpotqa.")
    model: ModelFacts = Field(description="Model the heads belong to.")
    heads: tuple[HeadScore, ...] = Field(min_length=1, description="Selected heads, best first.")
    provenance: Provenance = Field(description="How the list was produced.")
    score_table: tuple[tuple[float, ...], ...] | None = Field(
        None, description="Full per-head detection scores, [num_layers][num_heads].")

    @model_validator(mode="after")
    def _check_heads(self) -> "HeadConfig":
        m = self.model
        seen = set()
        for h in self.heads:
            if h.layer >= m.num_layers or h.head >= m.num_heads:
                raise ValueError(f"head {h.layer}-{h.head} is out of range for {m.model_id} "
                                 f"({m.num_layers} layers x {m.num_heads} heads)")
            if (h.layer, h.head) in seen:
                raise ValueError(f"head {h.layer}-{h.head} is listed twice")
            seen.add((h.layer, h.head))
        if self.score_table is not None and (
                len(self.score_table) != m.num_layers
                or any(len(r) != m.num_heads for r in self.score_table)):
            raise ValueError("score_table must be [num_layers][num_heads]")
        return self

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """The heads as ``(layer, head)`` tuples, best first."""
        return [(h.layer, h.head) for h in self.heads]

    def top(self, k: int) -> "HeadConfig":
        """The same config keeping only the first ``k`` heads."""
        return self.model_copy(update={"heads": self.heads[:k]})

    def check_model(self, facts: ModelFacts) -> None:
        """Fail loudly if this head list cannot belong to the model described by ``facts``.

        Raises:
            HeadConfigError: naming the first architecture fact that differs.
        """
        for field in ("num_layers", "num_heads", "num_kv_heads", "head_dim"):
            want, got = getattr(self.model, field), getattr(facts, field)
            if want != got:
                raise HeadConfigError(
                    f"head config {self.name!r} is for {self.model.model_id} ({field}={want}) "
                    f"but the model {facts.model_id} has {field}={got}")
        if _short(self.model.model_id) != _short(facts.model_id):
            logger.warning("head config %r was made for %s, used with %s (same shape)",
                           self.name, self.model.model_id, facts.model_id)

    # --- files -------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike) -> "HeadConfig":
        """Read a YAML or JSON head config. Raises HeadConfigError on any problem."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:  # not UTF-8 text: same error
            raise HeadConfigError(f"cannot read head config {path}: {e}") from e
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise HeadConfigError(f"invalid head config {path}: {e}") from e

    def save(self, path: str | os.PathLike) -> Path:
        """Write YAML (or JSON if the suffix is .json) atomically: temp file + rename."""
        path = Path(path)
        data = self.model_dump(mode="json", exclude_none=True)
        text = (json.dumps(data, indent=1) if path.suffix == ".json"
                else yaml.safe_dump(data, sort_keys=False, width=120))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a config is meant to be shared and read
        os.replace(tmp, path)
        return path


def parse_head_list(text: str) -> list[tuple[int, int]]:
    """The reference's ``"14-22,13-16,..."`` format → ``[(14, 22), (13, 16), ...]``."""
    try:
        return [tuple(int(x) for x in item.strip().split("-")) for item in text.split(",")]
    except ValueError as e:
        raise HeadConfigError(f"bad head list {text!r}: expected 'layer-head,...'") from e


def today() -> str:
    return dt.date.today().isoformat()


def _short(model_id: str) -> str:
    return Path(model_id.rstrip("/")).name.lower()
