"""``qrhead rerank``: rank documents for a query with the retrieval heads and print the ranking.

With no arguments it ranks an example on the bundled default model: a 4-document built-in one
on a fresh clone, or the first example of the evaluation half of the shared HotpotQA set when that
file is there (``../shared/data`` beside a checkout, or ``QRHEAD_DATA_DIR``), so a fresh install can show what the package does in one command.

When the input has relevance labels (the shipped example's supporting paragraphs, or ``--docs``
objects with ``"is_supporting": true`` as in the QRHead/ICR files) the table marks those
documents ``*gold*`` and a summary line says at which ranks they landed: the small default model
does not always put them first, and the first command should not hide that.

Every failure the package raises on purpose (:class:`QRHeadError`) is printed as one line on
stderr with exit code 2, the same code argparse uses for bad arguments: no tracebacks for user
errors.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from qrhead_vllm import dtypes
from qrhead_vllm.cli import add_log_level, apply_log_level
from qrhead_vllm.engines import DEFAULT_ENGINE, ENGINE_NAMES
from qrhead_vllm.errors import HeadConfigError, InvalidInputError, QRHeadError
from qrhead_vllm.models import DEFAULT_MODEL
from qrhead_vllm.scorers import DEFAULT_METHOD, SCORER_NAMES
from qrhead_vllm.results import ANY_FIELDS, Document, to_document

EXIT_USER_ERROR = 2

# Used only when the shared HotpotQA file is not there (e.g. an installed wheel).
BUILTIN_QUERY = "Which city is the capital of the country where the Eiffel Tower stands?"
BUILTIN_DOCS = [
    {"id": "tower", "title": "Eiffel Tower", "text": "The Eiffel Tower is a wrought-iron lattice "
     "tower on the Champ de Mars in Paris, France. It is named after the engineer Gustave Eiffel."},
    {"id": "bridge", "title": "Golden Gate Bridge", "text": "The Golden Gate Bridge is a "
     "suspension bridge spanning the Golden Gate strait in California, United States."},
    {"id": "paris", "title": "Paris", "text": "Paris is the capital and most populous city of "
     "France, with an estimated population of 2.1 million residents."},
    {"id": "pasta", "title": "Pasta", "text": "Pasta is a type of food made from unleavened "
     "dough of wheat flour mixed with water or eggs, typical of Italian cuisine."},
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--query", help="the query (default: the shipped example's question)")
    parser.add_argument("--docs", metavar="FILE",
                        help="documents: JSONL or a JSON list of strings or {id, title, text} "
                             "objects (default: the shipped example's documents)")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"bundled name, local HF directory or hub id (default: {DEFAULT_MODEL})")
    parser.add_argument("--heads", default=None,
                        help="head config name or path, or 'all' for every head (ICR); "
                             "default: the model's shipped head config")
    parser.add_argument("--method", choices=SCORER_NAMES, default=DEFAULT_METHOD,
                        help="scoring method (qrhead_vllm.scorers; icr scores with every head)")
    parser.add_argument("--backend", choices=ENGINE_NAMES, default=DEFAULT_ENGINE,
                        help="scoring engine (qrhead_vllm.engines; sglang needs .venv-sglang)")
    parser.add_argument("--dtype", choices=dtypes.CHOICES, default=dtypes.AUTO,
                        help="engine dtype (default auto: bfloat16 on CPUs with native bf16, "
                             "float32 on other CPUs, the engine's choice on GPU)")
    parser.add_argument("--top-k", type=int, default=None, help="show only the best K documents")
    parser.add_argument("--max-words", type=int, default=None,
                        help="truncate each document to this many words")
    parser.add_argument("--reverse-order", action=argparse.BooleanOptionalAction, default=True,
                        help="documents last-to-first in the prompt, the first one next to the "
                             "query (default; --no-reverse-order for Qwen2.5-Coder)")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    add_log_level(parser)


def run(args: argparse.Namespace) -> int:
    apply_log_level(args.log_level)
    try:
        query, docs, gold = _inputs(args.query, args.docs)
        results = _rank(args, query, docs)
    except HeadConfigError as e:
        hint = "" if args.heads else " (pass --heads all to use every head, or --heads <config>)"
        return _fail(f"{e}{hint}")
    except QRHeadError as e:
        return _fail(str(e))
    shown = results.top_k(args.top_k) if args.top_k is not None else list(results)
    if args.json:
        print(json.dumps(_as_json(args, results.query, shown, gold, gold_ranks(results, gold)),
                         indent=1, ensure_ascii=False))
    else:
        print(format_table(results.query, shown, args.model, args.heads or "default", gold))
        if gold:
            print("\n" + gold_summary(gold_ranks(results, gold), len(results)))
    return 0


def _fail(message: str) -> int:
    print(f"qrhead rerank: error: {message}", file=sys.stderr)
    return EXIT_USER_ERROR


def _rank(args: argparse.Namespace, query: str, docs: list):
    # Imported here: the ranker pulls in torch and the engine, which `--help` does not need.
    from transformers.utils import logging as hf_logging

    from qrhead_vllm.ranker import QRHeadRanker
    from qrhead_vllm.scorers import ScoringOptions

    hf_logging.disable_progress_bar()  # weight-loading bars would bury the table on the terminal

    if args.top_k is not None and args.top_k < 1:
        raise InvalidInputError("--top-k must be at least 1")
    options = ScoringOptions(args.method, args.heads)       # bad pairings fail before loading
    ranker = QRHeadRanker(model=args.model, options=options, backend=args.backend,
                          dtype=args.dtype, max_words=args.max_words,
                          reverse_order=args.reverse_order)
    try:
        return ranker.rank(query, docs)
    finally:
        ranker.close()


def _inputs(query: str | None, docs_file: str | None) -> tuple[str, list, set]:
    """The query, the documents to rank and the ids labelled relevant (empty when unlabelled):
    from the flags, else the shipped example."""
    if docs_file is not None:
        if query is None:
            raise InvalidInputError("--docs needs --query (the documents are ranked for it)")
        return (query, *load_docs(docs_file))
    example_query, example_docs, gold = shipped_example()
    if query is not None and query != example_query:
        gold = set()  # the example's labels say what answers its own question, not this one
    return (example_query if query is None else query), example_docs, gold


def shipped_example() -> tuple[str, list, set]:
    """First evaluation example of the shared HotpotQA set with its supporting-paragraph ids,
    or the built-in one (unlabelled)."""
    from qrhead_vllm.datasets import load_hotpotqa, shared_path, split_examples

    path = shared_path("hotpotqa")
    if not path.exists():
        return BUILTIN_QUERY, list(BUILTIN_DOCS), set()
    example = split_examples(load_hotpotqa(path))[1][0]
    return example.query, list(example.documents), set(example.gold_ids)


def gold_ranks(results, gold: set) -> list[int]:
    """The ranks (1 = best) at which the labelled documents landed, best first."""
    return sorted(r.rank for r in results if r.doc_id in gold)


def gold_summary(ranks: list[int], total: int) -> str:
    """One line, e.g. "supporting paragraphs (labelled, marked *gold*) at ranks 2 and 8 of 10"."""
    if not ranks:
        return f"none of the labelled supporting paragraphs is among the {total} ranked"
    many = "s" if len(ranks) > 1 else ""
    where = " and ".join(filter(None, [", ".join(map(str, ranks[:-1])), str(ranks[-1])]))
    return f"supporting paragraph{many} (labelled, marked *gold*) at rank{many} {where} of {total}"


def load_docs(path: str) -> tuple[list[Document], set]:
    """Documents from a JSON list or JSONL file (strings or objects), and the ids of those
    labelled ``"is_supporting": true``.

    The reference's field names (``paragraph_text``, ``idx``) are accepted as ``text`` / ``id``;
    a document without an id gets its position.
    """
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise InvalidInputError(f"cannot read --docs file {path}: {e.strerror or e}") from e
    try:
        data = json.loads(text)
        items = data if isinstance(data, list) else [data]
    except json.JSONDecodeError:  # not one JSON value: read it as JSON lines
        items = [_json_line(line, i, path) for i, line in enumerate(text.splitlines(), 1)
                 if line.strip()]
    if not items:
        raise InvalidInputError(f"--docs file {path} holds no documents")
    docs = [to_document(d, f"{path}: document {i}", i, ANY_FIELDS) for i, d in enumerate(items)]
    gold = {doc.doc_id for doc, d in zip(docs, items)
            if isinstance(d, dict) and d.get("is_supporting") is True}
    return docs, gold


def _json_line(line: str, number: int, path: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise InvalidInputError(f"{path} line {number} is not valid JSON: {e.msg}") from e


def format_table(query: str, results: list, model: str, heads: str,
                 gold: set | frozenset = frozenset()) -> str:
    """A fixed-width ranking table: rank, score, id, (``*gold*`` when labelled), title and the
    first words of the text."""
    lines = [f"query:  {query}", f"model:  {model}   heads: {heads}", ""]
    mark = f"{'gold':<6}  " if gold else ""
    header = f"{'rank':>4}  {'score':>9}  {'id':<10}  {mark}{'title':<24}  text"
    lines += [header, "-" * (len(header) + 40)]
    for r in results:
        doc = r.document
        mark = f"{'*gold*' if r.doc_id in gold else '':<6}  " if gold else ""
        lines.append(f"{r.rank:>4}  {r.score:>9.4f}  {_clip(str(r.doc_id), 10):<10}  {mark}"
                     f"{_clip(doc.title or '', 24):<24}  {_first_words(doc.text)}")
    return "\n".join(lines)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _first_words(text: str, n: int = 10) -> str:
    words = text.split()
    return " ".join(words[:n]) + (" …" if len(words) > n else "")


def _as_json(args: argparse.Namespace, query: str, results: list, gold: set,
             ranks: list[int]) -> dict:
    out = {
        "query": query, "model": args.model, "heads": args.heads or "default",
        "method": args.method, "backend": args.backend,
        "results": [{"rank": r.rank, "score": r.score, "index": r.index, "id": r.doc_id,
                     "title": r.document.title, "text": r.document.text}
                    | ({"gold": r.doc_id in gold} if gold else {}) for r in results],
    }
    if gold:
        out["gold_ranks"] = ranks
    return out
