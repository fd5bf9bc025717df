"""``qrhead rerank --dtype``: the installed command in a subprocess against the Python API, on the
transformers port of the bundled SmolLM2 (no engine start)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from qrhead_vllm.dtypes import CHOICES
from qrhead_vllm.ranker import QRHeadRanker

QRHEAD = Path(sys.executable).with_name("qrhead")   # the console script pip installed
QUERY = "Which city is the capital of France?"
DOCS = ["The Golden Gate Bridge spans the strait between San Francisco Bay and the Pacific.",
        "Paris is the capital and most populous city of France.",
        "Pasta is a staple food of traditional Italian cuisine."]


def rerank(tmp_path: Path, *flags: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``qrhead rerank`` of QUERY over DOCS with every head, JSON out, in a fresh process."""
    docs = tmp_path / "docs.json"
    docs.write_text(json.dumps(DOCS))
    return subprocess.run([str(QRHEAD), "rerank", "--query", QUERY, "--docs", str(docs),
                           "--heads", "all", "--json", *flags], capture_output=True, text=True,
                          timeout=600, env=env)


def scores(out: subprocess.CompletedProcess) -> dict[int, float]:
    assert out.returncode == 0, out.stderr
    return {r["index"]: r["score"] for r in json.loads(out.stdout)["results"]}


def test_the_dtype_reaches_the_engine(tmp_path):
    ranker = QRHeadRanker("smollm2-135m", heads="all", backend="transformers", dtype="float32")
    try:
        api = {r.index: r.score for r in ranker.rank(QUERY, DOCS)}
    finally:
        ranker.close()
    fp32 = scores(rerank(tmp_path, "--dtype", "float32"))
    assert fp32 == api                              # the same engine in the same dtype
    bf16 = scores(rerank(tmp_path, "--dtype", "bfloat16"))
    assert bf16.keys() == fp32.keys() and bf16 != fp32


def test_an_unknown_dtype_is_refused_with_the_choices(tmp_path):
    out = rerank(tmp_path, "--dtype", "int8")
    assert out.returncode == 2 and out.stdout == ""
    assert "--dtype: invalid choice: 'int8'" in out.stderr
    assert all(f"'{choice}'" in out.stderr for choice in CHOICES)
