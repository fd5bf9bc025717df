"""The detection job: select examples, spread them over Ray actors, checkpoint every record,
reduce on the driver, write the HeadConfig and its report.

Fault tolerance has two layers. Ray restarts a lost actor (``max_restarts``) and retries the
call it was running (``max_task_retries``); if Ray gives up, the driver starts a fresh actor and
requeues the batch. A lost *driver* resumes from the checkpoint file on the next run with the
same settings: finished examples are never recomputed.
"""

from __future__ import annotations

import logging
import os
import random
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from qrhead_vllm.datasets import Example, load_examples, split_examples
from qrhead_vllm.datasets.records import first_duplicate
from qrhead_vllm.detect.checkpoint import Checkpoint
from qrhead_vllm.detect.config import DetectConfig
from qrhead_vllm.detect.worker import WORKER_FIELDS, DetectWorker
from qrhead_vllm.errors import QRHeadError
from qrhead_vllm.heads import HeadConfig

logger = logging.getLogger(__name__)
OnRecords = Callable[[int, list], None]   # (records checkpointed so far, live actor handles)


class DetectionError(QRHeadError, RuntimeError):
    """A detection job that could not finish (an example failed, actors kept dying)."""


@dataclass
class DetectionRun:
    """What a job produced: the config, its per-example records and where things went."""

    config: DetectConfig
    head_config: HeadConfig
    records: list[dict[str, Any]]
    file_hashes: dict[str, str]
    computed: int                       # examples scored by this run (the rest were resumed)
    paths: dict[str, Path] = field(default_factory=dict)


def select_examples(cfg: DetectConfig) -> tuple[list[Example], dict[str, str]]:
    """Load, split, limit and preprocess (candidate cut, reversal, seeded shuffle)."""
    examples, hashes = [], {}
    for path in cfg.data_paths:          # each file split on its own: halves stay disjoint
        part, part_hashes = load_examples(path, cfg.format, beir_split=cfg.beir_split,
                                          candidates=cfg.candidates)
        if cfg.split != "all":
            part = split_examples(part)[0 if cfg.split == "detect" else 1]
        examples += part[: cfg.limit] if cfg.limit else part
        hashes.update(part_hashes)
    dup = first_duplicate(e.qid for e in examples)
    if dup is not None:
        raise DetectionError(f"example id {dup!r} appears in more than one of {cfg.data_paths}")
    # One generator seeded once, consumed example by example: the reference's random.seed(42)
    # followed by random.shuffle(docs) in the loop.
    rng = random.Random(cfg.shuffle_seed) if cfg.shuffle_seed is not None else None
    out = []
    for ex in examples:
        docs = list(ex.documents)[: cfg.max_docs]
        if cfg.reverse_docs:
            docs.reverse()
        if rng is not None:
            rng.shuffle(docs)
        out.append(replace(ex, documents=tuple(docs)))
    return out, hashes


def ensure_ray(address: str | None) -> None:
    """Connect to ``address`` / RAY_ADDRESS, else start a fresh local cluster (once per
    process; see qrhead_vllm.ray_cluster)."""
    from qrhead_vllm.ray_cluster import init_ray

    init_ray(address or os.environ.get("RAY_ADDRESS"), log_to_driver=True)


class ActorPool:
    """A fixed number of detection actors; replaces one Ray could not restart."""

    def __init__(self, cfg: DetectConfig):
        import ray

        settings = {k: getattr(cfg, k) for k in WORKER_FIELDS}
        self._make = lambda: ray.remote(DetectWorker).options(
            num_cpus=cfg.cpus_per_actor, num_gpus=cfg.gpus_per_actor,
            max_restarts=cfg.max_restarts, max_task_retries=cfg.max_restarts,
            scheduling_strategy=cfg.placement.upper(),     # Ray's names: DEFAULT, SPREAD
        ).remote(settings)
        self.actors = [self._make() for _ in range(cfg.num_actors)]
        self.replacements_left = cfg.max_restarts

    def replace(self, i: int, handle, error: Exception) -> None:
        if self.actors[i] is not handle:            # already replaced after an earlier failure
            return
        if self.replacements_left <= 0:
            raise DetectionError(f"detection actor {i} died and cannot be replaced: {error}")
        import ray

        self.replacements_left -= 1
        logger.warning("detection actor %d died (%s); starting a new one", i, error)
        ray.kill(handle, no_restart=True)   # a half-restarted old actor must free its CPUs
        self.actors[i] = self._make()


def run_batches(cfg: DetectConfig, todo: list[tuple[str, Example]], ckpt: Checkpoint,
                done: int, total: int, on_records: OnRecords | None = None) -> dict:
    """Score ``todo`` on Ray actors, checkpoint each result as it arrives; return the meta."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError
    from tqdm import tqdm

    ensure_ray(cfg.ray_address)
    pool = ActorPool(cfg)
    meta = ray.get(pool.actors[0].info.remote())
    ckpt.write_meta(meta)
    queue = deque(todo[i: i + cfg.batch_size] for i in range(0, len(todo), cfg.batch_size))
    pending: dict = {}

    def submit(i: int) -> None:
        if queue:
            handle, batch = pool.actors[i], queue.popleft()
            pending[handle.score.remote(batch)] = (i, handle, batch)

    # Two calls in flight per actor: the next batch is already queued on the actor while the
    # driver checkpoints the previous one.
    for i in range(len(pool.actors)):
        submit(i)
        submit(i)
    bar = tqdm(total=total, initial=done, unit="ex", desc=f"detect {cfg.head_set_name}",
               disable=not cfg.progress, dynamic_ncols=True)
    try:
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            i, handle, batch = pending.pop(ref)
            try:
                records = ray.get(ref)
            except RayTaskError as e:           # the example itself failed: report which
                logger.error("remote traceback:\n%s", e)
                raise DetectionError(f"scoring examples {[ex.qid for _, ex in batch]} failed: "
                                     f"{e.cause if e.cause is not None else e}") from e
            except RayActorError as e:          # Ray gave up restarting: replace and requeue
                pool.replace(i, handle, e)
                queue.appendleft(batch)
                submit(i)
                continue
            ckpt.append(records)
            done += len(records)
            bar.update(len(records))
            if on_records is not None:
                on_records(done, pool.actors)
            submit(i)
    finally:
        bar.close()
        for actor in pool.actors:
            ray.kill(actor)
    return meta
