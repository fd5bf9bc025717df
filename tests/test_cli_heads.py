"""``qrhead heads``: the installed command in a subprocess, over the shipped head configs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from qrhead_vllm.commands.heads import grid
from qrhead_vllm.head_registry import load_head_config, shipped_head_configs
from qrhead_vllm.heads import HeadConfig, HeadScore, ModelFacts, Provenance

QRHEAD = Path(sys.executable).with_name("qrhead")   # the console script pip installed


def qrhead(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(QRHEAD), "heads", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def marked(grid_text: str) -> set[tuple[int, int]]:
    """(layer, head) of every ``#`` in a grid: rows start with the layer number."""
    cells = set()
    for line in grid_text.splitlines():
        label, _, row = line.strip().partition("  ")
        if label.isdigit():
            cells |= {(int(label), h) for h, c in enumerate(row) if c == "#"}
    return cells


def test_grid_marks_exactly_the_selected_heads():
    facts = ModelFacts(model_id="toy", architecture="LlamaForCausalLM", num_layers=3,
                       num_heads=12, num_kv_heads=4, head_dim=8)
    config = HeadConfig(name="toy", model=facts, provenance=Provenance(source="manual"),
                        heads=(HeadScore(layer=2, head=11), HeadScore(layer=0, head=0)))
    text = grid(config)
    assert marked(text) == {(2, 11), (0, 0)}
    assert len([line for line in text.splitlines() if line.strip()[:1].isdigit()]) == 3 + 1
    assert text.splitlines()[0].split() == ["0", "1"]      # tens above heads 0 and 10


def test_list_names_every_shipped_set_with_its_model_and_size():
    out = qrhead()
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line.split() for line in out.stdout.splitlines()[2:] if line}
    shipped = shipped_head_configs()
    for name, path in shipped.items():
        config = load_head_config(path)
        assert rows[name][1:3] == [config.model.model_id, str(len(config.heads))], name
    assert rows["smollm2-135m-hotpotqa"][-1] == "smollm2-135m"       # the bundled default
    assert rows["smollm2-135m-hotpotqa-cite"][-2:] == ["smollm2-135m", "(citations)"]
    assert "paper," in " ".join(rows["llama-3.1-8b-instruct-nq"])


def test_one_set_as_a_grid_with_its_heat_map():
    name = "smollm2-135m-hotpotqa"
    out = qrhead(name)
    assert out.returncode == 0, out.stderr
    config = load_head_config(name)
    assert marked(out.stdout) == set(config.pairs)
    rows = [line for line in out.stdout.splitlines() if line.strip().split(" ")[0].isdigit()]
    assert len(rows) == config.model.num_layers
    heat_map = Path(out.stdout.rsplit("heat map: ", 1)[1].strip())
    assert heat_map == shipped_head_configs()[name].with_suffix(".png") and heat_map.exists()


def test_the_papers_lists_have_no_heat_map():
    out = qrhead("llama-3.1-8b-instruct-nq")
    assert out.returncode == 0, out.stderr
    assert marked(out.stdout) == set(load_head_config("llama-3.1-8b-instruct-nq").pairs)
    assert "heat map: none (the list was released without per-head scores)" in out.stdout


def test_from_a_wheel_the_heat_map_is_not_there(tmp_path):
    # The wheel's package data is configs/heads/*.yaml only: the same folder without the pngs.
    (tmp_path / "heads").mkdir()
    source = shipped_head_configs()["gemma3-270m-hotpotqa"]
    shutil.copy(source, tmp_path / "heads" / source.name)
    out = qrhead("gemma3-270m-hotpotqa", env={"QRHEAD_CONFIG_DIR": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert ("heat map: not shipped in the wheel (configs/heads/gemma3-270m-hotpotqa.png in the "
            "source repository)") in out.stdout


def test_a_file_by_path(tmp_path):
    path = tmp_path / "mine.yaml"
    shutil.copy(shipped_head_configs()["gemma3-270m-hotpotqa"], path)
    out = qrhead(str(path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("gemma3-270m-hotpotqa: google/gemma-3-270m, 18 layers x 4")
    assert f"heat map: none beside {path}" in out.stdout


def test_unknown_name_exits_2_with_the_names():
    out = qrhead("smollm2-135m-nope")
    assert out.returncode == 2 and out.stdout == ""
    assert "no head set named 'smollm2-135m-nope'" in out.stderr
    assert all(name in out.stderr for name in shipped_head_configs())
