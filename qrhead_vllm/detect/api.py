"""``detect_heads``: the Python entry point (the CLI and ``ray job submit`` call the same).

Flow: select examples → key each by content + scoring settings → score only the ones the
checkpoint lacks (Ray actors) → reduce with the recipe → HeadConfig with provenance, saved
atomically → heat map and stability report beside it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from qrhead_vllm.detect.checkpoint import Checkpoint, example_key, model_fingerprint
from qrhead_vllm.detect.config import DetectConfig
from qrhead_vllm.datasets import combined_sha256
from qrhead_vllm.detect.job import DetectionRun, OnRecords, run_batches, select_examples
from qrhead_vllm.detect.recipes import rank_heads, reduce_scores
from qrhead_vllm.detect.spans import SPANS
from qrhead_vllm.heads import HeadConfig, HeadScore, ModelFacts, Provenance, today

logger = logging.getLogger(__name__)


def run_detection(cfg: DetectConfig, on_records: OnRecords | None = None) -> DetectionRun:
    """Run (or resume) a detection job and write its outputs.

    Args:
        cfg: the job.
        on_records: test/monitoring hook called after every checkpoint write with the number
            of examples done and the live actor handles.
    """
    examples, hashes = select_examples(cfg)
    scoring_key = cfg.scoring_key(model_fingerprint(cfg.model))
    span = SPANS[cfg.span]
    keys = [example_key(scoring_key, ex, span.key_parts(ex)) for ex in examples]
    ckpt = Checkpoint(cfg.resolved_run_dir(scoring_key))
    if not cfg.resume:
        ckpt.reset()
    done = ckpt.load()
    todo = [(k, ex) for k, ex in zip(keys, examples) if k not in done]
    meta = ckpt.read_meta()
    logger.info("detect %s: %d examples, %d from checkpoint %s", cfg.head_set_name,
                len(examples), len(examples) - len(todo), ckpt.dir)
    if todo or meta is None:
        meta = run_batches(cfg, todo, ckpt, len(examples) - len(todo), len(examples), on_records)
        done = ckpt.load()
    records = [done[k] for k in keys]
    head_config = build_head_config(cfg, meta, records, hashes)
    out = Path(cfg.output)
    paths = {"config": head_config.save(out)}
    if cfg.report:
        from qrhead_vllm.detect.report import write_reports
        paths.update(write_reports(cfg, head_config, records))
    return DetectionRun(cfg, head_config, records, hashes, len(todo), paths)


def detect_heads(cfg: DetectConfig) -> HeadConfig:
    """Find the retrieval heads described by ``cfg``; writes ``cfg.output`` and returns it."""
    return run_detection(cfg).head_config


def build_head_config(cfg: DetectConfig, meta: dict, records: list[dict],
                      hashes: dict[str, str]) -> HeadConfig:
    """Reduce the records with the recipe into a HeadConfig with full provenance."""
    facts = ModelFacts.model_validate(meta["facts"])
    scores = reduce_scores(records, cfg.recipe)
    if scores.shape[0] != facts.num_layers * facts.num_heads:
        raise ValueError(f"checkpoint records have {scores.shape[0]} heads, the model has "
                         f"{facts.num_layers * facts.num_heads}: delete the run directory")
    ranked = rank_heads(scores, facts.num_heads)
    heads = tuple(HeadScore(layer=l, head=h, score=s) for l, h, s in ranked[: cfg.top_k])
    table = scores.reshape(facts.num_layers, facts.num_heads).tolist()
    provenance = Provenance(
        source="detected", recipe=cfg.recipe, span=cfg.span, dataset=cfg.data,
        dataset_sha256=combined_sha256(hashes), num_examples=len(records),
        seed=cfg.shuffle_seed, engine=meta["engine"], engine_version=meta["engine_version"],
        created=today(), notes=_notes(cfg, meta, records, hashes))
    return HeadConfig(name=cfg.head_set_name, model=facts, heads=heads, provenance=provenance,
                      score_table=tuple(tuple(r) for r in table))


def _notes(cfg: DetectConfig, meta: dict, records: list[dict], hashes: dict[str, str]) -> str:
    """Everything else needed to reproduce the list, in one line of text."""
    no_gold = sum(r["ndcg"] is None for r in records)
    parts = [
        f"split={cfg.split}" + (" (qrhead_vllm.datasets.split_examples, seed 0)"
                                if cfg.split != "all" else ""),
        f"limit={cfg.limit}", f"top_k={cfg.top_k}",
        "score=" + {"mass": "mean per-example gold mass", "ndcg": f"mean nDCG@{cfg.ndcg_k}",
                    "contrast": "mean gold score minus hardest negative"}[cfg.recipe],
        f"span={cfg.span}", f"calibrate={cfg.calibrate} null_query={cfg.null_query!r}",
        f"max_words={cfg.max_words} max_docs={cfg.max_docs} reverse_docs={cfg.reverse_docs}",
        f"shuffle_seed={cfg.shuffle_seed}", f"dtype={cfg.dtype}",
        f"prompt_family={meta.get('prompt_family')}", f"examples_without_gold={no_gold}",
    ]
    if len(hashes) > 1:
        parts.append("files=" + ", ".join(f"{Path(p).name}:{h[:12]}" for p, h in hashes.items()))
    return "; ".join(parts)
