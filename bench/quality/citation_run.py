"""One question of the citation bench: answer, then every method's raw output and its cost.

The model runs in the Python port (``backend="transformers"``), the oracle of the engine hooks.
Costs are measured per method on the same answer: the prefill scores (real prompt, then the null
suffix on the cached documents), the teacher-forced decode mass of every head (one forward
pass: the engine captures it while generating), BM25, and ContextCite's ablations.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Sequence

import torch

from bench.quality.answer import answer_scores, clean_prediction, normalize_answer
from bench.quality.baselines import bm25_rerank
from bench.quality.citations_baselines import (ablation_outputs, at2_features, at2_outputs,
                                               contextcite_scores)
from qrhead_vllm.core import Passage, truncate_words
from qrhead_vllm.core.citations import token_offsets
from qrhead_vllm.core.prompt import tokenize_prompt
from qrhead_vllm.datasets import Example
from qrhead_vllm.ranker import QRHeadRanker

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "results"
CACHE = ROOT / ".cache" / "citations"
DATA = {"hotpotqa": "HotpotQA distractor dev", "musique": "MuSiQue"}


def mass_path(model: str, dataset: str, qid: str, stage: str = "eval") -> Path:
    """Where the ``[G, L*H, N]`` decode mass of one answer is kept (fp16, not committed)."""
    return CACHE / model / stage / dataset / f"{qid}.pt"


def todo(path: Path, items: Sequence[tuple[Example, tuple]], model: str
         ) -> Iterable[tuple[Example, tuple]]:
    """The items whose question id ``model`` has not yet answered in the JSONL at ``path``."""
    done = set()
    if path.exists():
        done = {r["qid"] for r in map(json.loads, path.read_text().splitlines())
                if r.get("model") == model}
    path.parent.mkdir(parents=True, exist_ok=True)
    return [(e, a) for e, a in items if e.qid not in done]


class Bench:
    """The model (through a QRHeadRanker on the port: its default heads, prompt and order)."""

    def __init__(self, model: str, dtype: str, max_new_tokens: int, ablations: int):
        self.model_name = model
        self.ranker = QRHeadRanker(model, backend="transformers", dtype=dtype)
        self.backend = self.ranker.backend
        self.tokenizer = self.backend.tokenizer
        f = self.backend.facts
        self.all_pairs = [(l, h) for l in range(f.num_layers) for h in range(f.num_heads)]
        self.max_new_tokens, self.ablations = max_new_tokens, ablations
        self.eos = set(_as_list(self.backend.model.generation_config.eos_token_id))

    def prompt_ids(self, question: str, docs: Sequence) -> callable:
        """Prompt ids with only the documents a keep-mask keeps (the ranker's own layout)."""
        def ids(mask) -> list[int]:
            kept = [Passage(truncate_words(d.text, self.ranker.max_words), d.title)
                    for d, keep in zip(docs, mask) if keep]
            if self.ranker.reverse_order:
                kept.reverse()
            return list(tokenize_prompt(self.tokenizer, self.ranker.template, question,
                                        kept).token_ids)
        return ids

    @torch.inference_mode()
    def generate(self, prompt_ids: Sequence[int]) -> list[int]:
        """Greedy answer ids (the end-of-turn token included when the model emitted it)."""
        x = torch.tensor([list(prompt_ids)])
        out = self.backend.model.generate(
            x, attention_mask=torch.ones_like(x), max_new_tokens=self.max_new_tokens,
            do_sample=False, temperature=None, top_p=None, top_k=None,
            pad_token_id=self.tokenizer.pad_token_id or min(self.eos))
        return out[0, x.shape[1]:].tolist()

    def answer_tokens(self, gen: Sequence[int]) -> int:
        """Generated tokens that are the answer's text (a trailing end-of-turn is not)."""
        return len(gen) - (1 if gen and gen[-1] in self.eos else 0)


def _as_list(x) -> list[int]:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def answer_and_mass(b: Bench, dataset: str, e: Example, stage: str) -> dict:
    """Generate, score the prefill, capture every head's decode mass (kept in the cache)."""
    docs, req = b.ranker.prepare(e.query, list(e.documents))
    gen, t_gen = _timed(b.generate, req.real.token_ids)
    ranking, t_prefill = _timed(b.ranker.rank, e.query, list(e.documents))  # as /v1/rerank
    prefill = [0.0] * len(docs)
    for res in ranking.results:
        prefill[res.index] = res.score
    dm, t_decode = _timed(b.backend.decode_mass, req.real.token_ids, gen, b.all_pairs,
                          req.real.doc_spans)
    path = mass_path(b.model_name, dataset, e.qid, stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(dm.half(), path)
    text = b.tokenizer.decode(gen, skip_special_tokens=True)
    return {"qid": e.qid, "dataset": dataset, "question": e.query, "answer": text,
            "generated_ids": gen, "answer_tokens": b.answer_tokens(gen),
            "offsets": token_offsets(b.tokenizer, gen, text), "num_docs": len(docs),
            "prompt_tokens": req.real.num_tokens, "null_suffix_tokens":
            req.null.num_tokens - req.real.query_start if req.null else 0,
            "gold": [i for i, d in enumerate(docs) if str(d.doc_id) in e.gold_ids],
            "prefill_scores": prefill, "docs": docs,
            "seconds": {"generate": t_gen, "prefill": t_prefill, "decode_mass": t_decode}}


def measure(b: Bench, dataset: str, e: Example, answers: Sequence[str]) -> dict:
    """Everything the report needs for one evaluation question."""
    r = answer_and_mass(b, dataset, e, "eval")
    docs = r.pop("docs")
    ids = [str(d.doc_id) for d in docs]
    qa = replace(e, query=f"{e.query} {r['answer']}")
    order, r["seconds"]["bm25"] = _timed(lambda: bm25_rerank([qa])[e.qid])
    r["bm25_scores"] = [float(len(ids) - order.index(i)) for i in ids]
    r["contextcite_scores"], r["seconds"]["contextcite"] = None, None
    if r["answer_tokens"]:
        (masks, lp), t = _timed(ablation_outputs, b.backend.model,
                                b.prompt_ids(e.query, docs), len(docs),
                                r["generated_ids"][:r["answer_tokens"]], b.ablations)
        r["contextcite_scores"], t_fit = _timed(contextcite_scores, masks, lp)
        r["contextcite_scores"] = [float(x) for x in r["contextcite_scores"]]
        r["seconds"]["contextcite"] = t + t_fit
    r["ablations"] = b.ablations
    pred = clean_prediction(r["answer"])
    r["em"], r["f1"] = answer_scores(pred, answers) if answers else (None, None)
    r["contains_answer"] = any(normalize_answer(a) in normalize_answer(r["answer"])
                               for a in answers)
    return r


def train_example(b: Bench, dataset: str, e: Example, _answers) -> dict:
    """One AT2 training example of the detection half: answer, every head's mass, ablations."""
    r = answer_and_mass(b, dataset, e, "train")
    docs = r.pop("docs")
    if r["answer_tokens"]:
        (masks, lp), t = _timed(ablation_outputs, b.backend.model,
                                b.prompt_ids(e.query, docs), len(docs),
                                r["generated_ids"][:r["answer_tokens"]], b.ablations)
        r["masks"] = masks.astype(int).tolist()
        r["outputs"] = [float(x) for x in at2_outputs(lp)]
        r["seconds"]["ablations"] = t
    r["ablations"] = b.ablations
    return r


def load_mass(model: str, record: dict, stage: str = "eval") -> torch.Tensor:
    return torch.load(mass_path(model, record["dataset"], record["qid"], stage)).float()


def features_of(model: str, record: dict, stage: str = "eval") -> torch.Tensor:
    return at2_features(load_mass(model, record, stage), max(1, record["answer_tokens"]))
