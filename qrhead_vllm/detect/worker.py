"""The detection actor: one scoring backend, examples in, per-example head vectors out.

Plain class; :mod:`qrhead_vllm.detect.job` wraps it with ``ray.remote`` so importing this module
never needs Ray. Every head of every layer is scored on its own: the per-head scores of the
all-heads method (:data:`DETECT_METHOD`, :mod:`qrhead_vllm.scorers`); the backend streams per
layer and keeps only ``[H, T]`` row sums, so nothing here grows with L×H×T×T.
"""

from __future__ import annotations

import os
import time
from typing import Any, Sequence

from qrhead_vllm.datasets import Example
from qrhead_vllm.detect.spans import SPANS

DETECT_METHOD = "icr"     # every head of every layer; detection ranks them by their own scores

# The settings a worker needs (those that change scores are hashed by DetectConfig.scoring_key).
WORKER_FIELDS = ("model", "backend", "dtype", "engine_kwargs", "max_words", "calibrate",
                 "null_query", "prompt_family", "ndcg_k", "cpus_per_actor", "gpus_per_actor",
                 "span")


class DetectWorker:
    """Holds one engine and scores detection examples with all heads."""

    def __init__(self, settings: dict[str, Any]):
        import torch

        from qrhead_vllm.engines import engine, make_backend
        from qrhead_vllm.ranker import QRHeadRanker

        # Ray reserves num_cpus for us but torch would still spawn one thread per core.
        torch.set_num_threads(max(1, int(settings["cpus_per_actor"])))
        kwargs = dict(settings["engine_kwargs"])
        if settings.get("gpus_per_actor"):     # Ray gave us a GPU: use it unless told not to
            kwargs = {**engine(settings["backend"]).gpu_kwargs, **kwargs}
        backend = make_backend(settings["backend"], settings["model"], settings["dtype"], **kwargs)
        self.ranker = QRHeadRanker(
            settings["model"], method=DETECT_METHOD, backend=backend,
            calibrate=settings["calibrate"],
            prompt_family=settings["prompt_family"], max_words=settings["max_words"],
            null_query=settings["null_query"], reverse_order=False)  # order: --reverse-docs
        self.ndcg_k = settings["ndcg_k"]
        self.span = SPANS[settings["span"]]
        self.backend_name = settings["backend"]

    def info(self) -> dict[str, Any]:
        """Model facts and engine version, for the HeadConfig's provenance."""
        backend = self.ranker.backend
        return {"facts": backend.facts.model_dump(), "engine": self.backend_name,
                "engine_version": backend.engine_version,
                "prompt_family": self.ranker.template.family}

    def score(self, items: Sequence[tuple[str, Example]]) -> list[dict[str, Any]]:
        """Score ``(checkpoint key, example)`` pairs in one backend call → one record each."""
        from qrhead_vllm.detect.recipes import example_vectors

        start = time.perf_counter()
        prepared = [self.span.prepare(self.ranker, ex) for _, ex in items]
        masses = self.ranker.backend.attention_mass([req for _, req in prepared])
        seconds = (time.perf_counter() - start) / max(len(items), 1)
        records = []
        for (key, ex), (docs, req), mass in zip(items, prepared, masses):
            # [L*H, N], rows in (layer, head) row-major order: ranker.head_pairs for all heads.
            doc_scores = self.ranker.scorer.head_scores(mass, req.real.doc_spans)
            ids = [str(d.doc_id) for d in docs]
            records.append({"key": key, "qid": ex.qid, "num_docs": len(ids),
                            "num_tokens": req.real.num_tokens, "seconds": round(seconds, 3),
                            "pid": os.getpid(),
                            **example_vectors(doc_scores, ids, ex.gold_ids, self.ndcg_k)})
        return records

    def close(self) -> None:
        self.ranker.close()

