"""dtype="auto": bf16 on CPUs with native bf16, fp32 on other CPUs, the engine's choice on GPU."""

from __future__ import annotations

import pytest

from qrhead_vllm import dtypes
from qrhead_vllm.detect import DetectConfig
from qrhead_vllm.dtypes import cpu_flags, native_bf16, resolve_dtype
from qrhead_vllm.serve.args import QRHeadServeConfig

ZEN4 = frozenset({"avx2", "avx512f", "avx512_bf16"})
SAPPHIRE_RAPIDS = frozenset({"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"})
AVX2_ONLY = frozenset({"avx2", "fma"})


@pytest.mark.parametrize("flags,native", [(ZEN4, True), (SAPPHIRE_RAPIDS, True),
                                          (AVX2_ONLY, False), (frozenset({"amx_bf16"}), True),
                                          (frozenset(), False)])
def test_native_bf16_is_amx_bf16_or_avx512_bf16(flags, native):
    assert native_bf16(flags) is native


@pytest.mark.parametrize("flags,want", [(ZEN4, "bfloat16"), (AVX2_ONLY, "float32")])
def test_auto_on_cpu_follows_the_flags(monkeypatch, flags, want):
    monkeypatch.setattr(dtypes, "cpu_flags", lambda: flags)
    assert resolve_dtype("auto", "cpu") == want
    assert resolve_dtype(None, "cpu") == want


def test_auto_on_gpu_is_the_engines_choice_and_explicit_dtypes_are_kept(monkeypatch):
    monkeypatch.setattr(dtypes, "cpu_flags", lambda: ZEN4)
    assert resolve_dtype("auto", "cuda:0") == "auto"
    for explicit in ("float32", "bfloat16", "float16"):
        assert resolve_dtype(explicit, "cpu") == explicit


def test_this_machine_reads_its_own_flags():
    text = open("/proc/cpuinfo").read()
    assert native_bf16() == ("avx512_bf16" in text.split() or "amx_bf16" in text.split())
    assert cpu_flags()                              # a Linux x86 box always lists flags


def test_every_entry_point_defaults_to_auto():
    import inspect

    from qrhead_vllm import QRHeadRanker
    assert inspect.signature(QRHeadRanker).parameters["dtype"].default == "auto"
    assert DetectConfig.model_fields["dtype"].default == "auto"
    from qrhead_vllm.serve.builder import DEFAULT_CONFIG
    cfg = QRHeadServeConfig.from_yaml(DEFAULT_CONFIG)
    assert cfg.retriever.dtype == "auto"
    assert cfg.retriever.engine_overrides()["dtype"] == resolve_dtype("auto")


def test_auto_is_logged(caplog):
    with caplog.at_level("INFO", logger="qrhead_vllm.dtypes"):
        resolved = resolve_dtype("auto", "cpu")
    assert f"dtype=auto -> {resolved}" in caplog.text
