"""Windowing for the Serve app is the library's (:mod:`qrhead_vllm.windows`, driven by
``QRHeadRanker``); this module only names the settings the endpoints use.

* ``/v1/rerank`` with ``"qrhead": {"windowed": true}``: the ranker's ``rescore`` strategy (balanced
  windows, then the finalists re-scored together in one prompt), named here rather than taken
  from the library default, which may change (docs/results/quality-levers.md measured ``sliding``).
* ``/v1/answer``: the same, with ``rag.rescore_candidates`` finalists (at least ``top_k``).
"""

from __future__ import annotations

from qrhead_vllm.windows import WindowConfig


def rerank_window(limit: int) -> WindowConfig:
    """Windows of at most ``limit`` tokens; as many finalists as fit one of them."""
    return WindowConfig("rescore", window_tokens=limit)


def answer_window(limit: int, finalists: int) -> WindowConfig:
    """Windows of at most ``limit`` tokens; ``finalists`` (or what fits) re-scored together."""
    return WindowConfig("rescore", window_tokens=limit, finalists=finalists)
