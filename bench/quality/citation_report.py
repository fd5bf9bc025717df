"""The citation table, rebuilt from the bench's JSONL and the kept decode mass (no model)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Callable

import torch

from bench.quality.citation_metrics import RowStats, top_k
from bench.quality.citation_run import DATA, features_of, load_mass
from bench.quality.citations_baselines import TrainingExample, at2_scores, train_at2
from bench.report import git_commit, machine, now
from qrhead_vllm.core.citations import DEFAULT_RULE, CitationRule, cite
from qrhead_vllm.errors import HeadConfigError
from qrhead_vllm.head_registry import CITATION_HEADS, DEFAULT_HEADS, load_head_config

DECODE_ONLY = CitationRule(short_tokens=0)
NOTES = """\
How to read it:

* **Cited set.** Attention rows cite by `cite` in `qrhead_vllm/core/citations.py` (per answer
  sentence: the smallest top set of documents holding half of the sentence's mass, at most 3,
  each above the uniform share; the answer cites the union over its sentences). *Decode only*:
  the decode mass alone. *Blended*: a sentence of fewer than 8 tokens mixes its decode shares
  with the prefill scores' shares (weight tokens/8 on decode), the documented rule for short
  answers.
  Rows that only score documents (c-f) cite their top 2 (the gold sets hold 2 to 4).
* **recall@2** ranks the documents by the method's scores (attention rows: the mass summed over
  the answer's tokens and the head set's heads).
* **Forward passes / answer**, beyond generating the answer. Attention rows: 1 here, the port's
  teacher-forced pass over prompt + answer, which captures every head at once (so (a), (a'),
  (b) and (f) share it and its seconds); the engine captures the same rows while it generates,
  with no extra pass. (c): the prompt's prefill and the null-query suffix on the cached
  documents (in one-pass chat the prefill is the generation's own, the suffix the only extra).
  (d): none. (e): one pass per ablation (documents dropped from the prompt), then a LASSO fit.
  (f): AT2 weights the attention of every head from the same pass as (b); its training cost,
  once per model, is below.
* Generation is common to every row and reported once per data set.
"""
CITE_K = 2          # rows that only rank documents cite their top 2 (the gold sets hold 2-4)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()] \
        if path.exists() else []


def head_index(pairs, num_heads: int) -> torch.Tensor:
    """Rows of the all-heads capture (layer-major) that hold ``pairs``."""
    return torch.tensor([l * num_heads + h for l, h in pairs])


def cited_by_rule(mass: torch.Tensor, r: dict, rule: CitationRule, prefill) -> list[int]:
    """Every document some sentence of the answer cites (core/citations.cite)."""
    return sorted({i for c in cite(mass, r["offsets"], r["answer"], prefill, rule)
                   for i in c.document_indices})


def attention_rows(label: str, idx: torch.Tensor) -> list[tuple[str, Callable]]:
    """Two rows of one head set: the decode-only rule, and the blend with the prefill scores."""
    def rule_row(rule, blend):
        def row(r, mass):
            m = mass[:, idx, :]
            cited = cited_by_rule(m, r, rule, r["prefill_scores"] if blend else None)
            return cited, m.sum(dim=(0, 1)).tolist(), 1, r["seconds"]["decode_mass"]
        return row
    return [(f"{label}, decode only", rule_row(DECODE_ONLY, False)),
            (f"{label}, short answers blended with prefill", rule_row(DEFAULT_RULE, True))]


def ranking_row(key: str, passes: Callable[[dict], float], seconds: str) -> Callable:
    def row(r, _mass):
        scores = r[key]
        if scores is None:
            return None
        return top_k(scores, CITE_K), scores, passes(r), r["seconds"][seconds]
    return row


def citation_heads(model: str, num_heads: int) -> tuple[str, torch.Tensor | None]:
    """The model's shipped citation heads, or None (the row is pending) when it has none yet."""
    name = CITATION_HEADS.get(model)
    if name is None:
        return "(a') citation heads (none shipped yet)", None
    try:
        return f"(a') citation heads {name}", head_index(load_head_config(name).pairs, num_heads)
    except HeadConfigError:
        return f"(a') citation heads ({name}: not found)", None


def head_sets(model: str, num_heads: int, num_layers: int) -> list[tuple[str, object]]:
    return [("(a) retrieval heads " + DEFAULT_HEADS[model],
             head_index(load_head_config(DEFAULT_HEADS[model]).pairs, num_heads)),
            citation_heads(model, num_heads),
            ("(b) all heads", torch.arange(num_layers * num_heads))]


def all_rows(model: str, facts: tuple[int, int], at2_weights) -> list[tuple[str, Callable]]:
    num_layers, num_heads = facts
    rows = []
    for label, idx in head_sets(model, num_heads, num_layers):
        rows += attention_rows(label, idx) if idx is not None else [(label, None)]
    rows += [("(c) prefill scores, top 2 (/v1/rerank)",
              ranking_row("prefill_scores", lambda r: 2, "prefill")),
             ("(d) BM25 of question + answer, top 2",
              ranking_row("bm25_scores", lambda r: 0, "bm25")),
             ("(e) ContextCite, top 2",
              ranking_row("contextcite_scores", lambda r: r["ablations"], "contextcite"))]
    if at2_weights is None:
        rows.append(("(f) AT2, top 2", None))
    else:
        def at2(r, _mass):
            s = at2_scores(at2_weights, features_of(model, r))
            return top_k(s, CITE_K), s, 1, r["seconds"]["decode_mass"]
        rows.append(("(f) AT2, top 2", at2))
    return rows


def table(records: list[dict], model: str, rows) -> str:
    stats = {label: RowStats() for label, _ in rows}
    for r in records:
        mass = load_mass(model, r)
        for label, fn in rows:
            out = fn(r, mass) if fn is not None else None
            if out is not None:
                stats[label].add(out[0], r["gold"], out[1], out[2], out[3])
    lines = ["| method | precision | recall | recall@2 | docs cited | forward passes / answer "
             "| s / answer | n |", "|---|---|---|---|---|---|---|---|"]
    for label, fn in rows:
        m = stats[label].means()
        if fn is None or not m["n"]:
            lines.append(f"| {label} | pending | | | | | | 0 |")
            continue
        r2 = "" if m["recall@2"] is None else f"{m['recall@2']:.1f}"
        lines.append(f"| {label} | {m['precision']:.1f} | {m['recall']:.1f} | {r2} | "
                     f"{m['cited']:.2f} | {m['passes']:.0f} | {m['seconds']:.2f} | {m['n']} |")
    return "\n".join(lines)


def answer_summary(records: list[dict]) -> str:
    n = len(records)
    mean = lambda k: sum(r[k] or 0 for r in records) / n       # noqa: E731
    gen = sum(r["seconds"]["generate"] for r in records) / n
    toks = sum(len(r["generated_ids"]) for r in records) / n
    return (f"n = {n}; answers: EM {100 * mean('em'):.1f}, F1 {100 * mean('f1'):.1f}, gold "
            f"answer contained in the generation {100 * mean('contains_answer'):.1f} %; "
            f"{toks:.1f} generated tokens, {gen:.1f} s to generate, "
            f"{sum(r['prompt_tokens'] for r in records) / n:.0f} prompt tokens on average")


def train_weights(results: Path, model: str, facts: tuple[int, int]):
    """AT2's weights from every training example of the detection halves (None if none)."""
    examples, used = [], {}
    for dataset in DATA:
        for r in read_jsonl(results / f"citations-at2-train-{dataset}.jsonl"):
            if "masks" in r and r["model"] == model:
                examples.append(TrainingExample(features_of(model, r, "train"),
                                                torch.tensor(r["masks"]).bool().numpy(),
                                                torch.tensor(r["outputs"]).numpy()))
                used[dataset] = used.get(dataset, 0) + 1
    if not examples:
        return None, used
    return train_at2(examples, *facts), used


def at2_summary(results: Path, model: str, used: dict) -> str:
    if not used:
        return "AT2: no training example yet (row pending)."
    recs = [r for d in DATA for r in read_jsonl(results / f"citations-at2-train-{d}.jsonl")
            if "masks" in r and r["model"] == model]
    secs = sum(r["seconds"]["ablations"] + r["seconds"]["decode_mass"] for r in recs) / len(recs)
    return (f"AT2 training: {used} detection-half examples ({recs[0]['ablations']} ablations "
            f"each, keep probability 0.5), {secs:.0f} s of forward passes per example; weights "
            "fitted by the package's Pearson-correlation loss, 1000 full-batch Adam steps.")


def model_sections(results: Path, model: str) -> list[str]:
    """One model's tables (one per data set) and its AT2 training line."""
    from transformers import AutoConfig
    from qrhead_vllm.models import resolve_model
    cfg = AutoConfig.from_pretrained(resolve_model(model).path)
    facts = (cfg.num_hidden_layers, cfg.num_attention_heads)
    weights, used = train_weights(results, model, facts)
    rows = all_rows(model, facts, weights)
    parts = []
    for dataset, name in DATA.items():
        records = [r for r in read_jsonl(results / f"citations-{dataset}.jsonl")
                   if r["model"] == model]
        if records:
            parts += [f"## {model}: {name}, evaluation half", "", answer_summary(records), "",
                      table(records, model, rows), "", "Runs: " + "; ".join(
                          sorted({f"`{r['command']}` ({r['dtype']})" for r in records})), ""]
    return parts + [at2_summary(results, model, used), ""]


def write_report(results: Path, out: Path, models: list[str]) -> None:
    parts = ["# Citation quality: which documents did the answer come from?", "",
             f"Written {now()} on {machine()}, commit {git_commit()}.", "",
             f"Report: `{' '.join(shlex.quote(a) for a in sys.argv)}`", ""]
    for model in models:
        parts += model_sections(results, model)
    out.write_text("\n".join(parts + [NOTES]))
    print(out.read_text())
