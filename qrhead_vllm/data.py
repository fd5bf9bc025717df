"""Labelled retrieval examples (query, candidate documents, gold ids) and the fixed split of the
shared HotpotQA set into a detection part and an evaluation part.

Heads are never selected on the examples quality is reported on: detection uses
``split_examples(...)[0]``, the quality bench ``split_examples(...)[1]``.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from qrhead_vllm import envs
from qrhead_vllm.results import Document

def _shared_data() -> Path:
    """The project's shared data: QRHEAD_DATA_DIR, else ``../shared/data`` beside the checkout."""
    return envs.data_dir(Path(__file__).resolve().parents[2] / "shared" / "data")


SHARED_DATA = _shared_data()
HOTPOTQA = SHARED_DATA / "hotpotqa" / "distractor-dev-70.jsonl"
SPLIT_SEED = 0


@dataclass(frozen=True)
class Example:
    """One labelled query: candidates in their given order and the ids of the relevant ones."""

    qid: str
    query: str
    documents: tuple[Document, ...]
    gold_ids: frozenset[str] = field(default_factory=frozenset)


def load_hotpotqa(path: str | Path = HOTPOTQA) -> list[Example]:
    """The shared HotpotQA distractor file (`{id, question, documents, gold_ids}` per line)."""
    out = []
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        docs = tuple(Document(d["text"], d.get("title"), d["id"]) for d in r["documents"])
        out.append(Example(r["id"], r["question"], docs, frozenset(r["gold_ids"])))
    return out


def split_examples(examples: list[Example], seed: int = SPLIT_SEED
                   ) -> tuple[list[Example], list[Example]]:
    """Deterministic half split by a seeded shuffle of the sorted ids → (detection, evaluation)."""
    ids = sorted(e.qid for e in examples)
    random.Random(seed).shuffle(ids)
    detect_ids = set(ids[: len(ids) // 2])
    return ([e for e in examples if e.qid in detect_ids],
            [e for e in examples if e.qid not in detect_ids])
