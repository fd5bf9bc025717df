"""Answer bench: does QRHead's retrieval improve the answers a generator gives from it?

Each question comes with its own paragraphs (MuSiQue: 20, HotpotQA distractor: 10) as the long
context. A generator answers from five selections of them, and the answers are scored against
the dataset's answer and aliases (EM and token F1 as the HotpotQA/MuSiQue evaluation scripts
compute them: SQuAD normalisation, best over the answer and its aliases):

    (a) QRHead top-k   the retriever of the Serve config (bundled SmolLM2-135M, its default
                       heads, calibrated, documents reversed), through QRHeadRanker
    (b) BM25 top-k     bm25s over the question's own paragraphs (bench/quality/baselines.py)
    (c) dense top-k    the bundled all-MiniLM-L6-v2 (bench/quality/baselines.py)
    (d) full context   every paragraph, in the dataset's order
    (e) gold           the labelled supporting paragraphs only (the ceiling)

    python bench/quality/answer.py --out docs/results/                       # library call
    python bench/quality/answer.py --url http://127.0.0.1:8000       # + /v1/answer of an app
    python bench/quality/answer.py --url http://127.0.0.1:8000 --no-library \
        --url-modes retrieve_then_answer,one_pass   # the app's two answer modes, one generator

The app rows (``--url``) answer through ``/v1/answer`` with the question's paragraphs as
``passages``, once per ``--url-modes`` entry: ``retrieve_then_answer`` (score every paragraph,
generate from the best top-k) and ``one_pass`` (every paragraph in one prompt; the answer's own
prefill scores them, its top-k is what "recall" counts). Both generate with the app's engine,
so they compare the modes with the same generator.

Questions are processed in chunks: each chunk is retrieved, then every row is generated in one
batched vLLM call, then its per-question results are appended to the JSONL (so a stopped run
keeps what it finished; ``--report-only`` rebuilds the table from the JSONL). Times are per
question: retrieval is measured per question, generation is a row's batched wall time divided
by the chunk size (vLLM batches the chunk's prompts).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shlex
import string
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))   # `python bench/quality/answer.py`

from qrhead_vllm.datasets import (SPLIT_SEED, Example, load_shared, shared_path,  # noqa: E402
                                  split_examples)
from qrhead_vllm.results import Document                                   # noqa: E402

ROWS = ("qrhead", "bm25", "dense", "full", "gold")
LABELS = {"qrhead": "(a) QRHead top-{k}", "bm25": "(b) BM25 top-{k}",
          "dense": "(c) dense MiniLM top-{k}", "full": "(d) full context",
          "gold": "(e) gold paragraphs (ceiling)", "url": "/v1/answer top-{k} (app)",
          "url_one_pass": "/v1/answer one-pass, all paragraphs (app)"}
URL_ROWS = {"retrieve_then_answer": "url", "one_pass": "url_one_pass"}   # mode -> row
DATASETS = ("musique", "hotpotqa")
SYSTEM = ("Answer the question using the passages. Reply with the answer only: a name, a date, "
          "a number or a few words. No sentence, no explanation.")


# --- scoring: the HotpotQA / SQuAD evaluation script's normalisation, EM and F1 -------------

def normalize_answer(s: str) -> str:
    """Lowercase, drop punctuation, drop the articles a/an/the, collapse whitespace."""
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())


def f1_one(prediction: str, truth: str) -> float:
    """Token F1 (HotpotQA's: a yes/no/noanswer answer must match exactly)."""
    pred, gold = normalize_answer(prediction), normalize_answer(truth)
    if (pred in ("yes", "no", "noanswer") or gold in ("yes", "no", "noanswer")) and pred != gold:
        return 0.0
    p, g = pred.split(), gold.split()
    common = sum((collections.Counter(p) & collections.Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def answer_scores(prediction: str, truths: Sequence[str]) -> tuple[float, float]:
    """(EM, F1), each the best over the answer and its aliases (MuSiQue's evaluation)."""
    em = max(float(normalize_answer(prediction) == normalize_answer(t)) for t in truths)
    return em, max(f1_one(prediction, t) for t in truths)


def clean_prediction(text: str) -> str:
    """The generator's first line, without an "Answer:" prefix or a closing full stop."""
    line = next((l for l in text.strip().splitlines() if l.strip()), "")
    return re.sub(r"^\s*answer\s*:\s*", "", line, flags=re.I).strip().rstrip(".").strip()


def recall(selected: Sequence[str], gold: frozenset[str]) -> float:
    return len(set(selected) & gold) / len(gold) if gold else 1.0


# --- data ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Question:
    dataset: str
    example: Example
    answers: tuple[str, ...]


def load_questions(dataset: str, limit: int | None) -> list[Question]:
    """The evaluation half (never the head-detection half) with each record's answer + aliases."""
    path = shared_path(dataset)
    records = {str(r["id"]): r for r in map(json.loads, path.read_text().splitlines()) if r}
    examples = split_examples(load_shared(path))[1][:limit]
    return [Question(dataset, e, (records[e.qid]["answer"],
                                  *records[e.qid].get("answer_aliases", [])))
            for e in examples]


# --- retrieval rows --------------------------------------------------------------------------

def by_ids(e: Example, ids: Sequence[str]) -> list[Document]:
    docs = {str(d.doc_id): d for d in e.documents}
    return [docs[i] for i in ids]


class Retrievers:
    """Each row's selection for one question → (doc ids in prompt order, seconds spent)."""

    def __init__(self, rows: Sequence[str], k: int):
        self.k, self.rows = k, rows
        self.qrhead = self._serve_ranker() if "qrhead" in rows else None
        self._dense_model = None

    @staticmethod
    def _serve_ranker():
        """QRHeadRanker with the Serve CPU config's retriever settings (transformers port)."""
        from qrhead_vllm.ranker import QRHeadRanker
        from qrhead_vllm.serve.builder import DEFAULT_CONFIG
        from qrhead_vllm.serve.args import QRHeadServeConfig
        r = QRHeadServeConfig.from_yaml(DEFAULT_CONFIG).retriever
        heads = None if r.heads == "default" else r.heads
        return QRHeadRanker(r.model, heads=heads, backend="transformers", calibrate=r.calibrate,
                            max_words=r.max_words, reverse_order=r.reverse_order)

    def select(self, row: str, e: Example) -> tuple[list[str], float]:
        t0 = time.perf_counter()
        ids = self._select(row, e)
        return ids, time.perf_counter() - t0

    def _select(self, row: str, e: Example) -> list[str]:
        from bench.quality.baselines import bm25_rerank
        if row == "full":
            return [str(d.doc_id) for d in e.documents]
        if row == "gold":
            return [str(d.doc_id) for d in e.documents if str(d.doc_id) in e.gold_ids]
        if row == "qrhead":
            return [str(r.doc_id) for r in self.qrhead.rank(e.query, list(e.documents))][:self.k]
        if row == "dense":
            return self._dense(e)[:self.k]
        return bm25_rerank([e])[e.qid][:self.k]

    def _dense(self, e: Example) -> list[str]:
        """bench/quality/baselines.py's dense_rerank, with the model loaded once, not per question."""
        from bench.quality.baselines import dense_model_path, doc_text
        from bench.quality.metrics import order_by_scores
        if self._dense_model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")   # local files: never reach for the hub
            from sentence_transformers import SentenceTransformer
            self._dense_model = SentenceTransformer(dense_model_path(), device="cpu")
        q = self._dense_model.encode([e.query], normalize_embeddings=True, convert_to_tensor=True)
        docs = self._dense_model.encode([doc_text(d) for d in e.documents],
                                        normalize_embeddings=True, convert_to_tensor=True)
        return order_by_scores([str(d.doc_id) for d in e.documents], (docs @ q[0]).tolist())


# --- generation ------------------------------------------------------------------------------

def messages(question: str, docs: Sequence[Document]) -> list[dict[str, str]]:
    blocks = [(f"{d.title}: " if d.title else "") + d.text for d in docs]
    user = "Passages:\n\n" + "\n\n".join(blocks) + f"\n\nQuestion: {question}\nAnswer:"
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


class Generator:
    """One vLLM engine (no QRHead hook), greedy decoding, reused for every row."""

    def __init__(self, model: str, dtype: str, max_tokens: int, max_model_len: int):
        from vllm import LLM, SamplingParams
        from qrhead_vllm.integration.vllm.engine_args import engine_env, engine_kwargs
        from qrhead_vllm.models import resolve_model
        path = resolve_model(model).path
        kwargs = engine_kwargs(str(path), dtype, qrhead=False, max_model_len=max_model_len,
                               kv_cache_sequences=4, enforce_eager=True)
        with engine_env(qrhead=False):
            self.llm = LLM(**kwargs)
        self.params = SamplingParams(temperature=0.0, max_tokens=max_tokens)

    def answer(self, conversations: list[list[dict[str, str]]]) -> list[str]:
        outs = self.llm.chat(conversations, self.params, use_tqdm=False)
        return [o.outputs[0].text for o in outs]


def answer_over_http(url: str, q: Question, k: int, max_tokens: int,
                     mode: str = "retrieve_then_answer") -> dict[str, Any]:
    """/v1/answer of a running app with the question's paragraphs as ``passages``."""
    import httpx
    docs = list(q.example.documents)
    body = {"question": q.example.query, "top_k": k, "max_tokens": max_tokens,
            "temperature": 0, "mode": mode,
            "passages": [{"title": d.title, "text": d.text} for d in docs]}
    t0 = time.perf_counter()
    r = httpx.post(f"{url.rstrip('/')}/v1/answer", json=body, timeout=900)
    r.raise_for_status()
    out = r.json()
    return {"ids": [str(docs[p["index"]].doc_id) for p in out["passages"]],
            "raw": out["answer"], "retrieval_s": out["timings"].get("retrieval_s", 0.0),
            "generation_s": out["timings"]["generation_s"],
            "total_s": time.perf_counter() - t0}


# --- the run ---------------------------------------------------------------------------------

def run_chunk(chunk: list[Question], args, retrievers: Retrievers | None,
              generator: Generator | None) -> list[dict[str, Any]]:
    """Every row for a chunk of questions → one result record per (question, row)."""
    out = []
    if generator is not None:
        picks = {(q.example.qid, row): retrievers.select(row, q.example)
                 for q in chunk for row in args.rows}
        for row in args.rows:
            convs = [messages(q.example.query, by_ids(q.example, picks[q.example.qid, row][0]))
                     for q in chunk]
            t0 = time.perf_counter()
            raws = generator.answer(convs)
            gen_s = (time.perf_counter() - t0) / len(chunk)
            for q, raw in zip(chunk, raws):
                ids, ret_s = picks[q.example.qid, row]
                out.append(record(q, row, ids, raw, ret_s, gen_s))
    if args.url:
        for q in chunk:
            for mode in args.url_modes:
                got = answer_over_http(args.url, q, args.top_k, args.max_tokens, mode)
                out.append(record(q, URL_ROWS[mode], got["ids"], got["raw"],
                                  got["retrieval_s"], got["generation_s"]))
    return out


def record(q: Question, row: str, ids: list[str], raw: str, retrieval_s: float,
           generation_s: float) -> dict[str, Any]:
    prediction = clean_prediction(raw)
    em, f1 = answer_scores(prediction, q.answers)
    return {"dataset": q.dataset, "qid": q.example.qid, "row": row,
            "question": q.example.query, "answers": list(q.answers), "selected": ids,
            "gold": sorted(q.example.gold_ids), "recall": recall(ids, q.example.gold_ids),
            "raw": raw, "prediction": prediction, "em": em, "f1": f1,
            "retrieval_s": round(retrieval_s, 4), "generation_s": round(generation_s, 4)}


def summary_table(results: list[dict[str, Any]], k: int) -> str:
    """One markdown table per dataset: EM, F1, recall@k and seconds per question for each row."""
    parts = []
    for ds in DATASETS:
        mine = [r for r in results if r["dataset"] == ds]
        if not mine:
            continue
        n = len({r["qid"] for r in mine})
        parts += [f"**{ds}** ({n} questions)", "",
                  "| row | EM | F1 | recall of gold | retrieval s/q | generation s/q |",
                  "|---|---|---|---|---|---|"]
        for row in ROWS + tuple(URL_ROWS.values()):
            rs = [r for r in mine if r["row"] == row]
            if not rs:
                continue
            mean = {f: sum(r[f] for r in rs) / len(rs)
                    for f in ("em", "f1", "recall", "retrieval_s", "generation_s")}
            parts.append(f"| {LABELS[row].format(k=k)} | {100 * mean['em']:.1f} | "
                         f"{100 * mean['f1']:.1f} | {100 * mean['recall']:.1f} | "
                         f"{mean['retrieval_s']:.2f} | {mean['generation_s']:.2f} |")
        parts.append("")
    return "\n".join(parts)


def write_report(path: Path, results: list[dict[str, Any]], facts: dict[str, str], k: int):
    lines = ["# Answer quality: retrieve, then answer (MuSiQue, HotpotQA)", ""]
    lines += [f"- **{key}**: {value}" for key, value in facts.items()]
    lines += ["", summary_table(results, k), NOTES]
    path.write_text("\n".join(lines) + "\n")


NOTES = """EM and F1: the HotpotQA/SQuAD evaluation script's (lowercase, punctuation and articles
removed, whitespace collapsed; F1 over tokens; yes/no must match exactly), the best over the
answer and its aliases. "recall of gold": the share of the labelled supporting paragraphs among
the ones the generator was given (recall@k for the top-k rows; 100 by construction for the full
context and gold rows). Retrieval s/q for QRHead is the transformers port on CPU; the full and
gold rows select nothing. Generation s/q is a row's batched vLLM wall time per question, on a
shared 2-core machine: compare rows with each other, not with other machines. Per-question
results (selected ids, raw and cleaned answers) are in the JSONL beside this file.

The app rows (/v1/answer) report the app's own timings, one request at a time: top-k is the
retriever call, then the generator's answer from the kept paragraphs; one-pass has no separate
retrieval (0.00), its generation s/q prefills every paragraph once and decodes the answer with
the scores and citations captured on the way. Its "recall of gold" counts the top-k of that
generation's own prefill scores."""


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--limit", type=int, default=None, help="first N evaluation questions each")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma list of {','.join(ROWS)}")
    p.add_argument("--top-k", type=int, default=5, help="paragraphs of the top-k rows")
    p.add_argument("--generator", default="qwen2.5-coder-0.5b",
                   help="bundled name or HF directory of the answering model")
    p.add_argument("--gen-dtype", default="bfloat16")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--max-model-len", type=int, default=6144)
    p.add_argument("--chunk", type=int, default=10, help="questions per batched generation")
    p.add_argument("--url", default=None, help="also score /v1/answer of this running app")
    p.add_argument("--no-library", action="store_true", help="with --url: only the app rows")
    p.add_argument("--url-modes", default="retrieve_then_answer",
                   help=f"with --url: comma list of /v1/answer modes, of {','.join(URL_ROWS)}")
    p.add_argument("--out", default="docs/results")
    p.add_argument("--name", default="quality-answer")
    p.add_argument("--append", action="store_true",
                   help="add to the existing JSONL instead of starting it afresh (e.g. another "
                        "dataset); the table then covers both runs")
    p.add_argument("--report-only", action="store_true",
                   help="rebuild the table from the existing JSONL")
    args = p.parse_args(argv)
    args.datasets = [d for d in args.datasets.split(",") if d]
    args.rows = [r for r in args.rows.split(",") if r]
    args.url_modes = [m for m in args.url_modes.split(",") if m]
    bad = ((set(args.rows) - set(ROWS)) | (set(args.datasets) - set(DATASETS))
           | (set(args.url_modes) - set(URL_ROWS)))
    if bad:
        p.error(f"unknown rows/datasets/modes {sorted(bad)}")
    return args


def main(argv=None) -> int:
    from bench.report import git_commit, machine, now
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jsonl, md = out / f"{args.name}.jsonl", out / f"{args.name}.md"
    facts = {"command": f"`python bench/quality/answer.py {shlex.join(argv)}`", "date": now(),
             "commit": git_commit(), "machine": machine(),
             "data": f"evaluation half of `split_examples` (seed {SPLIT_SEED}) of "
                     + ", ".join(f"`{shared_path(d).name}`" for d in args.datasets)
                     + "; heads were detected on the other half",
             "retriever": "smollm2-135m, the Serve CPU config's heads/calibration/order",
             "generator": f"{args.generator} ({args.gen_dtype}), greedy, max "
                          f"{args.max_tokens} new tokens, vLLM on CPU",
             "k": str(args.top_k)}
    if args.no_library:
        facts["generator"] = (f"the app's engine at --url (its model), greedy, max "
                              f"{args.max_tokens} new tokens")
    if args.append:
        facts["command"] += " (added to the JSONL of the earlier run the README names)"
    if not args.report_only:
        questions = [q for d in args.datasets for q in load_questions(d, args.limit)]
        library = not args.no_library
        retrievers = Retrievers(args.rows, args.top_k) if library else None
        generator = (Generator(args.generator, args.gen_dtype, args.max_tokens,
                               args.max_model_len) if library else None)
        if not args.append:
            jsonl.write_text("")
        t0 = time.perf_counter()
        for start in range(0, len(questions), args.chunk):
            chunk = questions[start:start + args.chunk]
            with jsonl.open("a") as f:
                for r in run_chunk(chunk, args, retrievers, generator):
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")
            print(f"  {start + len(chunk)}/{len(questions)} questions, "
                  f"{time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    results = [json.loads(line) for line in jsonl.read_text().splitlines() if line]
    write_report(md, results, facts, args.top_k)
    print(summary_table(results, args.top_k))
    print(f"wrote {md} and {jsonl}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
