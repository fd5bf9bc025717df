"""Per-example checkpoints of a detection run: an append-only JSONL of records in a run
directory, keyed by a content hash of the example and every setting that changes its scores.

A killed driver resumes by reading the file back; a record half-written at the moment of the
kill (no trailing newline) is dropped and recomputed. ``meta.json`` keeps the model facts and
engine version, so a run whose examples are all checkpointed needs no engine at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from qrhead_vllm.datasets import Example

logger = logging.getLogger(__name__)


# Files whose content decides the scores besides the weights (hashed in full); weights are
# identified by name and size, which is cheap and catches a re-dequantised or swapped model.
_MODEL_TEXT_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json",
                     "special_tokens_map.json", "generation_config.json")


def model_fingerprint(model: str) -> str:
    """A hash of the model directory the actors will load (bundled models are resolved, i.e.
    dequantised once, here on the driver); hub ids that are not local hash to their name."""
    from qrhead_vllm.models import resolve_model

    path = Path(resolve_model(model).path)
    if not path.is_dir():
        return model
    h = hashlib.sha256()
    for name in _MODEL_TEXT_FILES:
        if (path / name).exists():
            h.update(name.encode() + b"\0" + (path / name).read_bytes())
    for weights in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        h.update(f"{weights.name}:{weights.stat().st_size}".encode())
    return h.hexdigest()[:16]


def example_key(scoring_key: str, ex: Example, extra: list | tuple = ()) -> str:
    """Content hash of one prepared example under one scoring setup; ``extra``: more of the
    example that the span reads (the answer), left out when empty so older keys stay valid."""
    parts = [scoring_key, ex.qid, ex.query, [[str(d.doc_id), d.title, d.text]
                                             for d in ex.documents], sorted(ex.gold_ids)]
    blob = json.dumps(parts + ([list(extra)] if extra else []), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class Checkpoint:
    """``records.jsonl`` + ``meta.json`` in ``run_dir``."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self.records_path = self.dir / "records.jsonl"
        self.meta_path = self.dir / "meta.json"

    def load(self) -> dict[str, dict[str, Any]]:
        """Every complete record, by key (the last one wins if a key was written twice)."""
        if not self.records_path.exists():
            return {}
        self._drop_partial_tail()
        out = {}
        with open(self.records_path, encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{self.records_path}:{n}: corrupt checkpoint record "
                                     f"({e.msg}); delete the run directory to start over") from e
                out[rec["key"]] = rec
        return out

    def _drop_partial_tail(self) -> None:
        """Cut a record interrupted mid-write (the file must end with a newline)."""
        data = self.records_path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            logger.warning("checkpoint %s: dropping a partly written last record (%d bytes)",
                           self.records_path, len(data) - keep)
            with open(self.records_path, "r+b") as f:
                f.truncate(keep)

    def append(self, records: list[dict[str, Any]]) -> None:
        """Append records durably (flush + fsync): a kill right after loses nothing."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.records_path, "a", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def reset(self) -> None:
        """Forget earlier records (``resume=False``)."""
        for p in (self.records_path, self.meta_path):
            p.unlink(missing_ok=True)

    def read_meta(self) -> dict[str, Any] | None:
        if not self.meta_path.exists():
            return None
        return json.loads(self.meta_path.read_text())

    def write_meta(self, meta: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.meta_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, self.meta_path)
