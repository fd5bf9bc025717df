#!/usr/bin/env python
"""Convert the QRHead paper's released head lists into typed HeadConfig YAMLs.

The reference repo (princeton-pli/QRHead, ``src/qrretriever/configs/*_qr_head_{NQ,LME}.yaml``)
ships each head set as one comma-separated ``"layer-head"`` string in rank order, without the
model's shape and without scores. Serving needs the shape to refuse a list made for another
model, so each list is written here with the architecture facts of its model (docs/method.md §3.1).

Usage::

    python scripts/convert_paper_heads.py [--out configs/heads]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from qrhead_vllm.heads import HeadConfig, HeadScore, ModelFacts, Provenance, parse_head_list

REPO = "princeton-pli/QRHead"
REPO_COMMIT = "7a668e7"  # the reference commit the spec was read at
OUT_DIR = Path(__file__).resolve().parents[1] / "configs" / "heads"

# Architecture facts from each model's config.json on the hub.
MODELS = {
    "Llama-3.1-8B-Instruct": ModelFacts(
        model_id="meta-llama/Llama-3.1-8B-Instruct", architecture="LlamaForCausalLM",
        num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128),
    "Llama-3.2-3B-Instruct": ModelFacts(
        model_id="meta-llama/Llama-3.2-3B-Instruct", architecture="LlamaForCausalLM",
        num_layers=28, num_heads=24, num_kv_heads=8, head_dim=128),
    "Llama-3.2-1B-Instruct": ModelFacts(
        model_id="meta-llama/Llama-3.2-1B-Instruct", architecture="LlamaForCausalLM",
        num_layers=16, num_heads=32, num_kv_heads=8, head_dim=64),
    "Qwen2.5-7B-Instruct": ModelFacts(
        model_id="Qwen/Qwen2.5-7B-Instruct", architecture="Qwen2ForCausalLM",
        num_layers=28, num_heads=28, num_kv_heads=4, head_dim=128),
    "Llama-3.1-70B-Instruct": ModelFacts(
        model_id="meta-llama/Llama-3.1-70B-Instruct", architecture="LlamaForCausalLM",
        num_layers=80, num_heads=64, num_kv_heads=8, head_dim=128),
}


@dataclass(frozen=True)
class DetectionSet:
    """What the paper detected a head set on (docs/method.md §1.2 and §1.6)."""

    recipe: str
    dataset: str
    num_examples: int
    seed: int | None
    notes: str


NQ = DetectionSet(
    "ndcg", "PrincetonPLI/QRHead data/beir_data/nq_train.json", 128, 42,
    "Heads ranked by per-head nDCG@10 on NQ (BEIR nq-test qrels); docs shuffled once with "
    "random.seed(42), paragraphs truncated to 400 words. Paper's default set for BEIR.")
LME = DetectionSet(
    "mass", "PrincetonPLI/QRHead data/longmemeval_data/single-session-user_s.json", 70, None,
    "Heads ranked by calibrated, outlier-masked attention mass on gold rounds, mean over "
    "examples. Paper's default set for LongMemEval and CLIPPER.")

# (model, set, attn_head_set) verbatim from the reference YAMLs, best head first.
PAPER_HEAD_SETS = [
    ("Llama-3.1-8B-Instruct", "NQ",
     "14-22,13-16,14-28,14-31,16-19,14-1,16-26,17-24,14-0,13-0,16-25,13-12,13-1,13-10,17-27,20-14"),
    ("Llama-3.1-8B-Instruct", "LME",
     "13-18,13-21,8-11,14-13,17-29,13-1,13-13,14-29,14-31,13-8,16-1,17-21,13-3,10-31,13-4,14-22"),
    ("Llama-3.2-3B-Instruct", "NQ",
     "13-16,12-12,13-23,13-21,15-18,12-3,21-20,12-1,13-2,13-1,12-6,12-11,13-0,15-22,18-19,18-11"),
    ("Llama-3.2-3B-Instruct", "LME",
     "15-18,15-22,16-15,18-19,13-23,12-1,21-20,20-11,18-11,18-18,13-16,16-16,18-15,19-8,15-17,"
     "17-2"),
    ("Llama-3.2-1B-Instruct", "NQ",
     "8-21,8-14,7-22,6-31,8-28,10-26,10-0,5-5,8-3,6-30,8-0,7-26,7-25,7-23,11-4,8-20"),
    ("Qwen2.5-7B-Instruct", "NQ",
     "16-19,16-2,16-20,16-14,16-0,15-24,16-18,17-18,16-1,19-18,19-19,18-16,16-17,19-25,19-17,"
     "20-21"),
    ("Llama-3.1-70B-Instruct", "NQ",
     "31-32,35-26,35-25,35-21,39-41,35-29,38-18,37-9,52-19,35-6,47-18,52-58,35-24,35-28,37-29,"
     "35-40,37-25,39-40,34-1,31-39,37-24,35-23,31-37,35-20,33-18,35-50,64-31,35-42,37-28,47-17,"
     "35-19,35-3"),
    ("Llama-3.1-70B-Instruct", "LME",
     "35-17,35-27,31-33,35-7,35-43,35-20,33-16,31-38,35-40,35-25,53-1,35-19,35-24,23-42,21-39,"
     "52-58,28-45,39-43,17-61,14-21,33-18,36-52,35-47,71-6,27-21,29-55,35-23,38-48,35-28,39-41,"
     "35-21,38-55"),
]


def config_name(model: str, head_set: str) -> str:
    """``Llama-3.1-8B-Instruct``, ``NQ`` → ``llama-3.1-8b-instruct-nq`` (file stem and name)."""
    return f"{model}-{head_set}".lower()


def paper_config(model: str, head_set: str, head_list: str) -> HeadConfig:
    """One released list as a HeadConfig; validation catches a head outside the model."""
    detection = {"NQ": NQ, "LME": LME}[head_set]
    reference_file = f"{model}_qr_head_{head_set}.yaml"
    return HeadConfig(
        name=config_name(model, head_set),
        model=MODELS[model],
        # The paper released ranks only, not scores: score stays None.
        heads=tuple(HeadScore(layer=l, head=h) for l, h in parse_head_list(head_list)),
        provenance=Provenance(
            source="paper",
            reference=f"{REPO} src/qrretriever/configs/{reference_file}",
            recipe=detection.recipe, dataset=detection.dataset,
            num_examples=detection.num_examples, seed=detection.seed,
            notes=f"{detection.notes} Converted verbatim from the reference repo at "
                  f"{REPO_COMMIT}; arXiv 2506.09944.",
        ),
    )


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="directory to write YAMLs to")
    args = parser.parse_args(argv)
    written = []
    for model, head_set, head_list in PAPER_HEAD_SETS:
        config = paper_config(model, head_set, head_list)
        written.append(config.save(args.out / f"{config.name}.yaml"))
        print(f"wrote {written[-1]} ({len(config.heads)} heads)")
    return written


if __name__ == "__main__":
    main()
