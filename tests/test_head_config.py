"""HeadConfig files: every shipped YAML validates, files round-trip, and every way a head list
can be wrong ends in a HeadConfigError that says what is wrong."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from qrhead_vllm.errors import HeadConfigError
from qrhead_vllm.head_registry import load_head_config, resolve_heads, shipped_head_configs
from qrhead_vllm.heads import HeadConfig, HeadScore, ModelFacts, Provenance

SHIPPED = shipped_head_configs()
SPEC = Path(__file__).resolve().parent / "data" / "paper-heads.md"  # docs/method.md §3.1, vendored
LLAMA_8B = ModelFacts(model_id="meta-llama/Llama-3.1-8B-Instruct", architecture="LlamaForCausalLM",
                      num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128)


def sample_config(**changes) -> HeadConfig:
    """A config using every optional field, so a round trip exercises all of them."""
    data = dict(
        name="sample", model=LLAMA_8B,
        heads=(HeadScore(layer=14, head=22, score=0.5), HeadScore(layer=13, head=16, score=1e-5)),
        provenance=Provenance(source="detected", recipe="mass", dataset="hotpotqa",
                              dataset_sha256="ab" * 32, num_examples=35, seed=0,
                              engine="vllm", engine_version="0.32.0", created="2026-01-01"),
        score_table=tuple(tuple(float(l * 32 + h) / 7 for h in range(32)) for l in range(32)),
    )
    data.update(changes)
    return HeadConfig(**data)


def write(tmp_path: Path, text: str | bytes, name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


# --- shipped files ---------------------------------------------------------------------------

def test_configs_are_shipped():
    assert SHIPPED, "configs/heads is empty"


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_config_loads_and_validates(name):
    config = load_head_config(name)
    assert config.name == name  # load by name finds the file by stem: they must agree
    assert config == HeadConfig.load(SHIPPED[name])
    config.check_model(config.model)
    if config.provenance.source == "paper":
        # The paper kept 16 heads for <10B models and 32 for 70B; it released no scores.
        assert len(config.heads) == (32 if config.model.num_layers == 80 else 16)
        assert all(h.score is None for h in config.heads)
        assert config.provenance.reference.startswith("princeton-pli/QRHead src/qrretriever/")
        assert config.provenance.recipe == {"nq": "ndcg", "lme": "mass"}[name.rsplit("-", 1)[1]]


def spec_head_table() -> dict[str, tuple[int, int, list[tuple[int, int]]]]:
    """Rows of the paper's head-list table (tests/data/paper-heads.md, docs/method.md §3.1) →
    {our config name: (layers, heads, head list)}."""
    rows, shape = {}, {}
    row = re.compile(r"\| ([\w.\-]+Instruct)( \((\d+)×(\d+)=\d+\))? \| (NQ|LME)\b.*\| ([\d,\-]+) \|$")
    for line in SPEC.read_text().replace("\u2011", "-").splitlines():  # the spec uses U+2011
        m = row.match(line)
        if m:
            model, head_set, heads = m.group(1), m.group(5), m.group(6)
            if m.group(3):
                shape[model] = (int(m.group(3)), int(m.group(4)))
            pairs = [tuple(int(x) for x in p.split("-")) for p in heads.split(",")]
            rows[f"{model}-{head_set}".lower()] = (*shape[model], pairs)
    return rows


def test_paper_configs_match_the_spec_table():
    table = spec_head_table()
    assert len(table) == 8
    for name, (layers, heads, pairs) in table.items():
        assert name in SHIPPED, f"paper head set {name} not converted"
        config = load_head_config(name)
        assert (config.model.num_layers, config.model.num_heads) == (layers, heads)
        assert config.pairs == pairs  # rank order kept


# --- round trips -----------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_round_trip(tmp_path, suffix):
    config = sample_config()
    assert HeadConfig.load(config.save(tmp_path / f"c{suffix}")) == config


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_configs_round_trip_through_json(tmp_path, name):
    config = load_head_config(name)
    assert HeadConfig.load(config.save(tmp_path / f"{name}.json")) == config


def test_top_keeps_rank_order():
    assert sample_config().top(1).pairs == [(14, 22)]


# --- invalid head lists ----------------------------------------------------------------------

@pytest.mark.parametrize("layer,head", [(32, 0), (0, 32), (40, 40)])
def test_out_of_range_head_is_named(tmp_path, layer, head):
    data = sample_config().model_dump(mode="json")
    data["heads"].append({"layer": layer, "head": head})
    with pytest.raises(ValidationError, match=f"head {layer}-{head} is out of range"):
        HeadConfig.model_validate(data)
    path = write(tmp_path, json.dumps(data))
    with pytest.raises(HeadConfigError, match=f"head {layer}-{head} is out of range"):
        HeadConfig.load(path)


def test_duplicate_head_is_rejected(tmp_path):
    data = sample_config().model_dump(mode="json")
    data["heads"].append({"layer": 13, "head": 16})
    path = write(tmp_path, json.dumps(data))
    with pytest.raises(HeadConfigError, match="head 13-16 is listed twice"):
        HeadConfig.load(path)


@pytest.mark.parametrize("field", ["num_layers", "num_heads", "num_kv_heads", "head_dim"])
def test_check_model_names_the_mismatching_field(field):
    other = LLAMA_8B.model_copy(update={field: getattr(LLAMA_8B, field) * 2,
                                        "model_id": "someone/other-model"})
    with pytest.raises(HeadConfigError, match=field) as err:
        sample_config().check_model(other)
    assert "someone/other-model" in str(err.value)


def test_check_model_other_name_same_shape_only_warns(caplog):
    twin = LLAMA_8B.model_copy(update={"model_id": "my-org/llama-8b-finetune"})
    with caplog.at_level(logging.WARNING, logger="qrhead_vllm.heads"):
        sample_config().check_model(twin)
    assert "my-org/llama-8b-finetune" in caplog.text


# --- resolve_heads ---------------------------------------------------------------------------

def test_resolve_pairs_builds_a_manual_config():
    config = resolve_heads([(14, 22), [3, 1]], "custom", LLAMA_8B)
    assert config.pairs == [(14, 22), (3, 1)]
    assert config.provenance.source == "manual" and config.model == LLAMA_8B


def test_resolve_pairs_out_of_range_is_a_head_config_error():
    with pytest.raises(HeadConfigError, match="32-0"):
        resolve_heads([(32, 0)], "custom", LLAMA_8B)


def test_resolve_all_means_every_head():
    assert resolve_heads("all", "custom", LLAMA_8B) is None


def test_resolve_shipped_name_and_path():
    assert resolve_heads("llama-3.1-8b-instruct-nq", "x", LLAMA_8B).pairs[0] == (14, 22)
    by_path = resolve_heads(str(SHIPPED["llama-3.1-8b-instruct-lme"]), "x", LLAMA_8B)
    assert by_path.pairs[0] == (13, 18)


def test_resolve_shipped_name_for_another_model_fails():
    with pytest.raises(HeadConfigError, match="num_layers"):
        resolve_heads("llama-3.1-70b-instruct-nq", "x", LLAMA_8B)


def test_resolve_unknown_name_lists_shipped_names():
    with pytest.raises(HeadConfigError, match="no head config named 'nope'") as err:
        resolve_heads("nope", "custom", LLAMA_8B)
    for name in SHIPPED:
        assert name in str(err.value)


def test_resolve_without_heads_needs_a_default():
    with pytest.raises(HeadConfigError, match="no default head config"):
        resolve_heads(None, "not-a-bundled-model", LLAMA_8B)


# --- malformed files -------------------------------------------------------------------------

@pytest.mark.parametrize("content", [
    "heads: [1, 2\n",                      # YAML syntax error
    "- just\n- a list\n",                  # YAML, wrong shape
    "",                                    # empty file
    "name: x\n",                           # required fields missing
    "42\n",                                # a scalar
    b"\xff\xfe\x00not utf-8",              # not text at all
], ids=["syntax", "list", "empty", "missing", "scalar", "binary"])
def test_malformed_file_is_a_head_config_error(tmp_path, content):
    path = write(tmp_path, content)
    with pytest.raises(HeadConfigError, match=re.escape(str(path))):
        HeadConfig.load(path)


def test_unknown_field_is_rejected(tmp_path):
    data = sample_config().model_dump(mode="json")
    data["attn_head_set"] = "14-22"  # the reference's key: not silently ignored
    with pytest.raises(HeadConfigError, match="attn_head_set"):
        HeadConfig.load(write(tmp_path, json.dumps(data)))


def test_missing_file_is_a_head_config_error(tmp_path):
    with pytest.raises(HeadConfigError, match="cannot read"):
        HeadConfig.load(tmp_path / "absent.yaml")
