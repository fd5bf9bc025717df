"""Real head detection through Ray (a local cluster) with the bundled SmolLM2.

Four examples of the HotpotQA detection half, documents cut to 25 words so one example takes
about a second. Three runs share one Ray session: uninterrupted, with the actor killed after two
checkpointed examples, and a driver restart from a truncated checkpoint. All must write the
same HeadConfig.
"""

from __future__ import annotations

import os

import pytest

from conftest import HOTPOTQA_DETECT
from qrhead_vllm.detect import DetectConfig, run_detection
from qrhead_vllm.head_registry import load_head_config, resolve_heads
from qrhead_vllm.heads import HeadConfig

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
N = 4


@pytest.fixture(scope="module")
def ray_local():
    import ray
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    yield ray
    ray.shutdown()


def job(tmp_path, name: str, **kw) -> DetectConfig:
    return DetectConfig(data=str(HOTPOTQA_DETECT), split="all", limit=N, max_words=25, top_k=8,
                        output=str(tmp_path / f"{name}.yaml"), run_dir=str(tmp_path / name),
                        progress=False, **{"dtype": "float32", **kw})  # engines agree in fp32


@pytest.fixture(scope="module")
def baseline(ray_local, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("detect")
    return tmp, run_detection(job(tmp, "plain"))


def same_heads(a: HeadConfig, b: HeadConfig) -> None:
    assert a.pairs == b.pairs
    flat = lambda hc: [x for row in hc.score_table for x in row]  # noqa: E731
    assert flat(a) == pytest.approx(flat(b), rel=1e-9, abs=1e-12)


def test_detection_writes_a_valid_config(baseline):
    tmp, run = baseline
    loaded = HeadConfig.load(tmp / "plain.yaml")
    assert loaded == run.head_config == load_head_config(tmp / "plain.yaml")
    assert len(loaded.heads) == 8 and len(loaded.score_table) == loaded.model.num_layers == 30
    assert [h.score for h in loaded.heads] == sorted((h.score for h in loaded.heads), reverse=True)
    p = loaded.provenance
    assert (p.source, p.recipe, p.engine, p.num_examples) == ("detected", "mass", "transformers", N)
    assert p.engine_version and len(p.dataset_sha256) == 64 and "split=all" in p.notes
    assert resolve_heads(loaded, "smollm2-135m", loaded.model) is loaded
    for suffix in (".png", ".stability.json", ".stability.md"):
        assert (tmp / f"plain{suffix}").stat().st_size > 0
    assert run.computed == N


def test_killed_actor_resumes_to_the_same_config(baseline, tmp_path):
    import ray

    killed = []

    def kill_after_two(done: int, actors: list) -> None:
        if done == 2 and not killed:          # the actor is busy with example 3 right now
            killed.append(True)
            ray.kill(actors[0], no_restart=False)

    run = run_detection(job(tmp_path, "killed"), on_records=kill_after_two)
    assert killed
    assert len({r["pid"] for r in run.records}) == 2, "the actor should have been restarted"
    same_heads(run.head_config, baseline[1].head_config)


def test_driver_restart_resumes_from_the_checkpoint(baseline, tmp_path):
    cfg = job(tmp_path, "restart")
    ckpt = tmp_path / "restart" / "records.jsonl"
    ckpt.parent.mkdir()
    lines = (baseline[0] / "plain" / "records.jsonl").read_text().splitlines(keepends=True)
    # A driver killed after two examples, in the middle of writing the third record.
    ckpt.write_text("".join(lines[:2]) + lines[2][: len(lines[2]) // 2])
    run = run_detection(cfg)
    assert run.computed == N - 2
    same_heads(run.head_config, baseline[1].head_config)


def test_cli_reduces_another_recipe_without_an_engine(baseline, capsys):
    from qrhead_vllm.cli import main

    tmp, _ = baseline
    out = tmp / "plain-ndcg.yaml"
    rc = main(["detect", "--data", str(HOTPOTQA_DETECT), "--split", "all", "--limit", str(N),
               "--max-words", "25", "--recipe", "ndcg", "--top-k", "8", "--no-progress",
               "--dtype", "float32",
               "--run-dir", str(tmp / "plain"), "--output", str(out)])
    assert rc == 0 and "(0 computed, 4 from checkpoint)" in capsys.readouterr().out
    ndcg = HeadConfig.load(out)
    assert ndcg.provenance.recipe == "ndcg" and 0 <= ndcg.heads[0].score <= 1


def test_module_entrypoint_help():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "qrhead_vllm.detect", "--help"],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.returncode == 0 and "--recipe" in out.stdout and "--ray-address" in out.stdout


def test_vllm_backend_selects_the_same_heads(baseline, tmp_path):
    """The engine hook and the reference port must agree (issue: same top-16 on the same data)."""
    run = run_detection(job(tmp_path, "vllm", backend="vllm", batch_size=N))
    assert run.head_config.provenance.engine == "vllm"
    assert run.head_config.pairs == baseline[1].head_config.pairs
    flat = lambda hc: [x for row in hc.score_table for x in row]  # noqa: E731
    assert flat(run.head_config) == pytest.approx(flat(baseline[1].head_config), abs=1e-6)
