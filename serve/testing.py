"""Running the real app for tests and benchmarks (a pytest plugin plus plain helpers).

Test modules opt in with ``pytest_plugins = ("serve.testing",)``; the session-scoped
``serve_app`` fixture then starts Ray + the app once for every module that uses it (an engine
start costs minutes on a shared 2-core box) and shuts both down at the end.

Before the app starts, the fixture computes the offline reference scores for
:func:`reference_cases` with ``QRHeadRanker(backend="vllm")`` in a subprocess, so only one engine
is alive at a time (24 GiB shared by several people).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from serve.args import QRHeadServeConfig
from serve.builder import DEFAULT_CONFIG

ROOT = Path(__file__).resolve().parents[1]
HOTPOTQA = ROOT.parent / "shared" / "data" / "hotpotqa" / "distractor-dev-70.jsonl"
TEST_HEADS = "default"      # the shipped smollm2-135m-hotpotqa config
# Host memory fraction for the test engine (weights + ~1.3 GiB KV cache, ~30K fp32 tokens): the
# box is shared, and Ray's memory monitor kills our replica when the whole machine nears 95%.
TEST_MEMORY_FRACTION = 0.12


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_config(**overrides: Any) -> QRHeadServeConfig:
    """The CPU default on a free port (others may be running an app on 8000)."""
    return QRHeadServeConfig.from_yaml(DEFAULT_CONFIG, **{
        "http.port": free_port(), "retriever.heads": TEST_HEADS,
        "retriever.gpu_memory_utilization": TEST_MEMORY_FRACTION, **overrides})


def hotpotqa_examples() -> list[dict[str, Any]]:
    """The shared HotpotQA records (question, documents with title/text, gold_ids)."""
    return [json.loads(line) for line in HOTPOTQA.read_text().splitlines() if line.strip()]


def reference_cases() -> list[dict[str, Any]]:
    """Rerank inputs whose offline scores the HTTP scores must equal (documents with titles)."""
    cases = [{"query": "Which city is the capital of France?",
              "documents": ["Paris is the capital and largest city of France.",
                            "Pasta is a staple food of Italian cuisine.",
                            "The Eiffel Tower stands on the Champ de Mars in Paris."]}]
    for ex in hotpotqa_examples()[:3]:
        docs = [{"title": d["title"], "text": d["text"]} for d in ex["documents"]]
        cases.append({"query": ex["question"], "documents": docs})
    return cases


REFERENCE_SCRIPT = """
import json, sys
from qrhead_vllm.ranker import QRHeadRanker
cfg = json.loads(sys.argv[1])
cases = json.load(open(sys.argv[2]))
r = cfg["retriever"]
ranker = QRHeadRanker(r["model"], heads=None if r["heads"] == "default" else r["heads"],
                      backend="vllm", dtype=r["dtype"], max_model_len=r["max_model_len"],
                      gpu_memory_utilization=r["gpu_memory_utilization"])
out = []
for c in cases:
    res = ranker.rank(c["query"], c["documents"])
    out.append({str(x.index): x.score for x in res.results})
json.dump(out, open(sys.argv[3], "w"))
"""


def offline_reference(cfg: QRHeadServeConfig, cases: list[dict[str, Any]]) -> list[dict]:
    """Offline ``QRHeadRanker(backend="vllm")`` scores per case (index -> score), in a child
    process that exits (and frees its engine) before the app starts."""
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp) / "cases.json", Path(tmp) / "scores.json"
        inp.write_text(json.dumps(cases))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT),
                                                            os.environ.get("PYTHONPATH", "")])}
        subprocess.run([sys.executable, "-c", REFERENCE_SCRIPT, cfg.model_dump_json(),
                        str(inp), str(out)], check=True, env=env, timeout=1200)
        return [{int(k): v for k, v in case.items()} for case in json.loads(out.read_text())]


@dataclass
class RunningApp:
    url: str
    config: QRHeadServeConfig
    cases: list[dict[str, Any]]
    reference: list[dict[int, float]]


@pytest.fixture(scope="session")
def serve_app():
    """The real app (Ray on this machine, vLLM on CPU, bundled SmolLM2, shipped heads)."""
    from serve.launch import start_local, stop_local

    if not HOTPOTQA.exists():
        pytest.skip(f"shared data file {HOTPOTQA} is absent")
    cfg = app_config()
    cases = reference_cases()
    reference = offline_reference(cfg, cases)
    url = start_local(cfg, num_cpus=min(os.cpu_count() or 2, 2))
    try:
        yield RunningApp(url, cfg, cases, reference)
    finally:
        stop_local()
