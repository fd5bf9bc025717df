"""DetectConfig: every knob of a head-detection job, typed and described once.

The same object drives the three entry points (``qrhead detect``, ``python -m
qrhead_vllm.detect`` under ``ray job submit``, and :func:`qrhead_vllm.detect.detect_heads`);
the CLI flags are generated from the field descriptions, so they cannot drift apart.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from qrhead_vllm import envs
from qrhead_vllm.core.prompt import NULL_QUERY
from qrhead_vllm.engines import DEFAULT_ENGINE, EngineName
from qrhead_vllm.heads import SpanName


class DetectConfig(BaseModel):
    """A head-detection job: which model and data, which recipe, how to run it on Ray."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    # --- what to detect on ------------------------------------------------------------------
    model: str = Field("smollm2-135m", description="Bundled model name, local HF dir or hub id.")
    data: str = Field(description="Detection data: a JSON/JSONL file or a BEIR-style directory; "
                                  "several, comma-separated, are split each and joined.")
    format: Literal["auto", "shared", "hotpotqa", "qrhead", "jsonl", "beir"] = Field(
        "auto", description="Input format ('hotpotqa' = 'shared', the shared JSONL shape); "
                            "'auto' guesses from the path and the first record.")
    beir_split: str = Field("test", description="BEIR only: qrels/<split>.tsv to read gold from.")
    candidates: str | None = Field(
        None, description="BEIR only: candidate list file (default <data>/candidates.tsv).")
    split: Literal["all", "detect", "eval"] = Field(
        "all", description="'detect'/'eval': the half of qrhead_vllm.datasets.split_examples to use "
                           "(never detect on the examples you report quality on).")
    limit: int | None = Field(None, gt=0, description="Use only the first N examples (of each file).")

    # --- preprocessing (docs/method.md §1.6 / §2.3) -----------------------------------------
    shuffle_seed: int | None = Field(
        None, description="Shuffle each example's documents with random.Random(seed) seeded once "
                          "(the reference NQ recipe uses 42); None keeps the given order.")
    reverse_docs: bool = Field(
        False, description="Reverse the candidate order (BEIR: rank-1 last).")
    max_docs: int | None = Field(None, gt=0, description="Keep only the first N candidates.")
    max_words: int | None = Field(
        None, gt=0, description="Truncate each document to N space-split words (reference: 400).")
    calibrate: bool = Field(True, description="Subtract the attention of the null twin: the "
                                              "same prompt with the null text in place of the "
                                              "question (span question) or of the answer "
                                              "(span answer).")
    null_query: str = Field(NULL_QUERY, description="The null text of the calibration twin.")
    prompt_family: str | None = Field(None, description="Override the chat markers of the prompt.")

    # --- recipe (docs/method.md §1.2) -------------------------------------------------------
    recipe: Literal["mass", "ndcg", "contrast"] = Field(
        "mass", description="'mass': mean calibrated masked attention on gold docs (LME recipe); "
                            "'ndcg': mean nDCG@k of each head's own ranking (NQ recipe); "
                            "'contrast': mean gold score minus the hardest negative's (CoRe-style).")
    span: SpanName = Field(
        "question", description="Whose attention is scored on the gold documents: 'question' "
                                "(retrieval heads: the ranking prompt's question span) or "
                                "'answer' (citation heads: the same prompt followed by the "
                                "example's gold answer, its tokens as the span).")
    ndcg_k: int = Field(10, gt=0, description="Cut-off of the ndcg recipe.")
    top_k: int = Field(16, gt=0, description="Heads to keep (16 below 10B, 32 for 70B).")
    stability_seed: int = Field(0, description="Seed of the two disjoint halves of the report.")

    # --- engine and Ray ---------------------------------------------------------------------
    backend: EngineName = Field(
        DEFAULT_ENGINE, description="Scoring backend each actor holds (qrhead_vllm.engines).")
    dtype: str = Field("auto", description="Model dtype: auto (bfloat16 on CPUs with native "
                                           "bf16, float32 on other CPUs, the engine's choice on "
                                           "GPU: qrhead_vllm.dtypes), float32, bfloat16, float16.")
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Extra backend arguments (JSON on the CLI).")
    num_actors: int = Field(1, gt=0, description="Ray actors, each holding one engine.")
    cpus_per_actor: float = Field(
        1, gt=0, description="num_cpus reserved per actor (= torch threads).")
    gpus_per_actor: float = Field(0, ge=0, description="num_gpus reserved per actor.")
    batch_size: int = Field(
        1, gt=0, description="Examples per actor call (checkpoint granularity).")
    max_restarts: int = Field(
        2, ge=0, description="Restarts of a lost actor (and retries of its calls).")
    placement: Literal["default", "spread"] = Field(
        "default", description="Where Ray puts the actors: 'default' (Ray's policy, the "
                               "driver's node first) or 'spread' (one per node where it can, so "
                               "a lost node takes one actor, restarted on a surviving node).")
    ray_address: str | None = Field(
        None, description="Ray cluster address; default: RAY_ADDRESS, else a fresh local "
                          "cluster (never the one Ray last recorded); an address that does not "
                          "answer within 15 s is an error.")

    # --- outputs ----------------------------------------------------------------------------
    output: str = Field(description="Where to write the HeadConfig (.yaml or .json).")
    name: str | None = Field(None, description="Name of the head set (default: output stem).")
    run_dir: str | None = Field(
        None, description="Checkpoint directory (default: QRHEAD_CACHE/detect-runs/<hash>).")
    resume: bool = Field(True, description="Reuse checkpointed examples of the same settings.")
    report: bool = Field(True, description="Write the heat map PNG and stability report.")
    progress: bool = Field(True, description="Show a progress bar.")

    @model_validator(mode="after")
    def _check(self) -> "DetectConfig":
        if Path(self.output).suffix not in (".yaml", ".yml", ".json"):
            raise ValueError(f"output must end in .yaml, .yml or .json, got {self.output!r}")
        if self.format != "beir" and (self.candidates is not None):
            if not Path(self.data).is_dir():
                raise ValueError("candidates= is only meaningful for a BEIR directory")
        return self

    @property
    def data_paths(self) -> list[str]:
        return [p.strip() for p in self.data.split(",") if p.strip()]

    @property
    def head_set_name(self) -> str:
        return self.name or Path(self.output).stem

    def scoring_key(self, model_fingerprint: str = "") -> str:
        """Hash of every setting that changes one example's per-head scores.

        Recipe, top-k, split and Ray placement are not part of it: a checkpoint holds the
        per-example vectors of both recipes, so re-reducing with another recipe is free.
        ``model_fingerprint`` (see :func:`qrhead_vllm.detect.checkpoint.model_fingerprint`)
        makes a re-dequantised model or a changed tokenizer invalidate old checkpoints.
        """
        keys = ("model", "backend", "dtype", "engine_kwargs", "max_words", "calibrate",
                "null_query", "prompt_family", "ndcg_k")
        settings = {k: getattr(self, k) for k in keys}
        if self.span != "question":   # absent for the question: older checkpoints stay valid
            settings["span"] = self.span
        if self.gpus_per_actor > 0:   # the device changes the floats a little
            settings["gpu"] = True
        settings["model_files"] = model_fingerprint
        blob = json.dumps(settings, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def resolved_run_dir(self, scoring_key: str) -> Path:
        """``run_dir``, else one directory per model and scoring settings in QRHEAD_CACHE."""
        if self.run_dir:
            return Path(self.run_dir)
        slug = Path(self.model.rstrip("/")).name.lower()
        return envs.cache_dir() / "detect-runs" / f"{slug}-{scoring_key}"

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> "DetectConfig":
        """Load a YAML/JSON job file; ``overrides`` (e.g. CLI flags) win over its values."""
        data = yaml.safe_load(Path(path).read_text()) or {}
        return cls.model_validate({**data, **overrides})
