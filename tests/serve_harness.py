"""Running the real app for the tests (not part of the wheel): a config on a free port, rerank cases from
labelled records, and offline reference scores computed in a child process.

The test suite's session-scoped ``serve_app`` fixture (tests/conftest.py) uses these: it computes
the offline reference scores with ``QRHeadRanker(backend="vllm")`` in a subprocess that exits
before the app starts, so only one engine is alive at a time, then starts Ray and the app once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from qrhead_vllm.serve.args import QRHeadServeConfig
from qrhead_vllm.serve.builder import DEFAULT_CONFIG
from qrhead_vllm.serve.launch import free_port

TEST_HEADS = "default"      # the shipped smollm2-135m-hotpotqa config


def app_config(**overrides: Any) -> QRHeadServeConfig:
    """The CPU default on a free port (others may be running an app on 8000)."""
    return QRHeadServeConfig.from_yaml(DEFAULT_CONFIG, **{
        "http.port": free_port(), "retriever.heads": TEST_HEADS, **overrides})


def hotpotqa_examples(path: str | Path) -> list[dict[str, Any]]:
    """HotpotQA records of a JSONL file (question, documents with title/text, gold_ids)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def reference_cases(examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rerank inputs whose offline scores the HTTP scores must equal (documents with titles)."""
    cases = [{"query": "Which city is the capital of France?",
              "documents": ["Paris is the capital and largest city of France.",
                            "Pasta is a staple food of Italian cuisine.",
                            "The Eiffel Tower stands on the Champ de Mars in Paris."]}]
    for ex in examples[:3]:
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
                      kv_cache_sequences=r["kv_cache_sequences"])
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
        subprocess.run([sys.executable, "-c", REFERENCE_SCRIPT, cfg.model_dump_json(),
                        str(inp), str(out)], check=True, timeout=1200)
        return [{int(k): v for k, v in case.items()} for case in json.loads(out.read_text())]


@dataclass
class RunningApp:
    url: str
    config: QRHeadServeConfig
    cases: list[dict[str, Any]]
    reference: list[dict[int, float]]


def deploy_extra_ingress(app: RunningApp, name: str, cfg: QRHeadServeConfig) -> str:
    """A second Serve application at ``/<name>``: only an ingress with ``cfg`` (e.g. API keys),
    bound by handle to ``app``'s engine, so tests vary the ingress without a second engine.
    Returns its base URL; ``serve.delete(name)`` removes it."""
    from ray import serve

    from qrhead_vllm.serve.ingress import QRHeadIngress

    engine = serve.get_deployment_handle("engine", app_name=app.config.app_name)
    ingress = QRHeadIngress.options(**cfg.http.ingress.serve_options())
    serve.run(ingress.bind(engine, engine, cfg), name=name, route_prefix=f"/{name}")
    return f"{app.url}/{name}"


@contextmanager
def keyed_ingress(app: RunningApp, name: str, key: str, key_dir: Path) -> Iterator[str]:
    """:func:`deploy_extra_ingress` with an API key file in ``key_dir`` holding ``key``: the
    real key check in front of the session app's engine. Removed on exit."""
    from ray import serve

    key_file = Path(key_dir) / "api-keys"
    key_file.write_text(key + "\n")
    cfg = app.config.model_copy(deep=True)
    cfg.http.api_key_file = str(key_file)
    try:
        yield deploy_extra_ingress(app, name, cfg)
    finally:
        serve.delete(name)
