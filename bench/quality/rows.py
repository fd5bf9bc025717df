"""The rows of a quality table: LLM rows (one per scoring method of qrhead_vllm.scorers and head
set: QRHead's head sets, ICR, random heads; one engine per model, every prompt prefilled once for
all of them), baselines, and the optional fusion row."""

from __future__ import annotations

import time

from bench.quality import baselines
from bench.quality.llm import HeadSet, llm_runs, random_head_sets
from bench.quality.metrics import Runs, evaluate_runs, mean_of, rrf_fuse
from bench.report import Row
from qrhead_vllm.engines import make_backend
from qrhead_vllm.scorers import DEFAULT_METHOD, SCORER_NAMES, scorer

# --methods that make LLM rows: every scoring method, and random head sets (QRHead's maths).
LLM_METHODS = SCORER_NAMES + ("random",)


def parse_heads(spec: str | None):
    """``--heads``: a shipped name, a path, ``all``, or ``L-H,L-H,...``."""
    if spec and "-" in spec and all(p.strip().replace("-", "").isdigit()
                                    for p in spec.split(",")):
        from qrhead_vllm.heads import parse_head_list
        return parse_head_list(spec)
    return spec


def sized(spec: str):
    """``name@k``: the top-k heads of a head config's full score table (detected sets keep
    the score of every head, so 8/32/64-head variants need no new detection run)."""
    import numpy as np

    from qrhead_vllm.detect.recipes import rank_heads
    from qrhead_vllm.head_registry import load_head_config
    from qrhead_vllm.heads import HeadScore

    name, k = spec.rsplit("@", 1)
    hc = load_head_config(name)
    if hc.score_table is None:
        return hc.top(int(k))
    ranked = rank_heads(np.asarray(hc.score_table, dtype=float).ravel(), hc.model.num_heads)
    heads = tuple(HeadScore(layer=l, head=h, score=s) for l, h, s in ranked[: int(k)])
    return hc.model_copy(update={"heads": heads, "name": spec})


def shipped_for(facts) -> list[str]:
    """Names of the shipped head configs made for this model (same id and shape)."""
    from qrhead_vllm.head_registry import load_head_config, shipped_head_configs

    names = []
    for name in shipped_head_configs():
        hc = load_head_config(name)
        if hc.model.model_id == facts.model_id and hc.model.num_heads == facts.num_heads:
            names.append(name)
    return names


def head_sets(args, facts) -> list[HeadSet]:
    sets = []
    for name in (m for m in args.methods if m in SCORER_NAMES):
        spec = scorer(name)
        if spec.all_heads:
            sets.append(HeadSet(spec.label, None, method=name))
            continue
        sets.append(HeadSet(f"{spec.label} (default heads)" if args.heads is None
                            else f"{spec.label} ({args.heads})", parse_heads(args.heads),
                            method=name))
        extra = [n for n in args.extra_heads.split(",") if n]
        if args.shipped_heads:
            extra += [n for n in shipped_for(facts) if n not in extra]
        sets += [HeadSet(f"{spec.label} ({n})", sized(n) if "@" in n else n, method=name)
                 for n in extra]
    if "random" in args.methods:
        sets += random_head_sets(facts, args.random_heads, args.random_draws)
    return sets


def llm_rows(args, model: str, backend: str, examples, qrels, notes, facts_out,
             ranker_kw) -> tuple[list[Row], Runs | None]:
    """Every head set of ``model`` on one engine; random draws folded into one averaged row.
    Also returns the first QRHead row's run (the fusion row's input)."""
    t0 = time.perf_counter()
    kw = {"device": args.device} if backend == "transformers" else {}
    if backend == "vllm" and args.max_model_len:
        kw["max_model_len"] = args.max_model_len
    try:
        engine = make_backend(backend, model, args.dtype, **kw)
    except Exception as e:                    # e.g. a model package that is not installed
        notes.append(f"{model} on {backend}: not available ({type(e).__name__}: {e})")
        return [], None
    try:
        sets = head_sets(args, engine.facts)
        batch = args.batch or (16 if backend == "vllm" else 1)
        results = llm_runs(model, engine, sets, examples, notes, batch, **ranker_kw)
    except Exception as e:                    # keep the other models' and baselines' rows
        notes.append(f"{model} on {backend}: failed while ranking ({type(e).__name__}: {e})")
        return [], None
    finally:
        engine.close()                        # a vLLM engine holds worker processes
    seconds = time.perf_counter() - t0
    facts_out[f"LLM time ({model}, {backend})"] = (
        f"{seconds:.0f} s for model load and all {len(sets)} head sets, "
        f"{seconds / max(len(examples), 1):.1f} s per query (each prompt prefilled once for "
        "every set; the machine line gives the load average at the start)")
    tag = f" [{backend}]" if args.backend == "both" else ""
    who = f", {model}" if len(args.models) > 1 else ""
    rows, draws, first_run = [], [], None
    for s, run, config in results:
        scores = evaluate_runs(qrels, run, args.metrics)
        if config is not None and config.provenance.source != "manual":
            facts_out[f"heads {config.name}"] = describe(config)   # where the set came from
            label = scorer(s.method).label
            rows.append(Row(f"{label} ({config.name}, {len(config.heads)} heads){tag}", scores))
        elif s.draw is None:
            rows.append(Row(s.label + who + tag, scores))
        else:
            draws.append((s.draw, scores))
        if first_run is None and s.method == DEFAULT_METHOD and s.draw is None:
            first_run = run
    if draws:
        rows.append(Row(f"random {args.random_heads} heads (mean of {len(draws)}){who}{tag}",
                        mean_of([d for _, d in draws]), draws))
    return rows, first_run


def describe(config) -> str:
    """Where a head set came from, so a reader can check it was not fit on these queries."""
    p = config.provenance
    bits = [f"{len(config.heads)} heads", f"source {p.source}"]
    bits += [f"{k} {v}" for k, v in (("recipe", p.recipe), ("data", p.dataset),
             ("examples", p.num_examples), ("created", p.created), ("notes", p.notes)) if v]
    return ", ".join(bits)


def baseline_rows(args, examples, qrels, first_stage_label: str) -> list[Row]:
    rows = []
    if "dense" in args.methods:
        rows.append(Row("dense all-MiniLM-L6-v2",
                        evaluate_runs(qrels, baselines.dense_rerank(examples), args.metrics)))
    if "bm25" in args.methods:
        rows.append(Row("BM25 (bm25s, over the candidates)",
                        evaluate_runs(qrels, baselines.bm25_rerank(examples), args.metrics)))
    if "original" in args.methods:
        rows.append(Row(first_stage_label, evaluate_runs(qrels, baselines.original_order(examples),
                                                         args.metrics)))
    return rows


def fusion_row(args, examples, qrels, qrhead_run: Runs, label: str) -> Row:
    """Reciprocal-rank fusion (k=60) of a QRHead run with the given order: its own row, never
    the QRHead row (the given order is the first stage's, so this row uses BM25 too)."""
    fused = rrf_fuse([qrhead_run, baselines.original_order(examples)])
    return Row(f"RRF fusion: {label} + first-stage order (not QRHead alone)",
               evaluate_runs(qrels, fused, args.metrics))
