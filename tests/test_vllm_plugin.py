"""The plugin's start-up contract: gated, idempotent, wraps (never copies), and fails loudly
at start-up on an unsupported vLLM version or an unknown KV-cache layout."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap

import pytest

from qrhead_vllm.errors import EngineCompatibilityError
from qrhead_vllm.integration.vllm import VERSIONS
from qrhead_vllm.patches import wrap_function, wrap_method

check_vllm_version, supported_range = VERSIONS.check, VERSIONS.supported_range


def _run(code: str, **env) -> subprocess.CompletedProcess:
    import os
    # Each probe starts without the QRHEAD_* variables of this test process (some tests set them).
    base = {k: v for k, v in os.environ.items() if not k.startswith("QRHEAD_")}
    full_env = {**base, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", **env}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full_env,
                          capture_output=True, text=True, timeout=600)


def test_supported_range_comes_from_our_metadata():
    assert "0.32.0" in supported_range() and "0.33.0" not in supported_range()
    assert check_vllm_version("0.32.0") == "vllm_0_32"
    assert check_vllm_version("0.32.0+cpu") == "vllm_0_32"


def test_unsupported_version_is_refused(monkeypatch):
    with pytest.raises(EngineCompatibilityError, match="supports vLLM .*0.32.*0.31.2 is installed"):
        check_vllm_version("0.31.2")
    monkeypatch.setenv("QRHEAD_SKIP_VERSION_CHECK", "1")
    # The escape hatch loads the nearest shipped hooks: an importable module, never a
    # ModuleNotFoundError for a version we have no patch file for.
    for version in ("0.31.2", "0.33.1", "1.0.0"):
        module = check_vllm_version(version)
        assert module == "vllm_0_32"
        importlib.import_module(f"qrhead_vllm.patches.{module}")


def test_wrap_method_checks_the_signature_and_patches_once():
    class Target:
        def forward(self, layer, query):
            return query + 1

    calls = []

    def make(original):
        def forward(self, layer, query):
            calls.append(query)
            return original(self, layer, query)
        return forward

    wrap_method(Target, "forward", ("self", "layer", "query"), make)
    wrap_method(Target, "forward", ("self", "layer", "query"), make)  # idempotent
    assert Target().forward(None, 1) == 2 and calls == [1]
    with pytest.raises(EngineCompatibilityError, match="does not exist"):
        wrap_method(Target, "missing", ("self",), make)
    class Other:
        def forward(self, x):
            return x
    with pytest.raises(EngineCompatibilityError, match="expected parameters"):
        wrap_method(Other, "forward", ("self", "layer", "query"), make)


def test_wrap_function_checks_the_signature_and_patches_once():
    import types

    def module_with(source: str) -> types.ModuleType:
        module = types.ModuleType(f"qrhead_probe_{abs(hash(source))}")
        exec(source, module.__dict__)
        return module

    def make(original):
        def get_pp_indices(n, rank, size):
            start, end = original(n, rank, size)
            return start, min(end, 3)
        return get_pp_indices

    params = ("num_hidden_layers", "pp_rank", "pp_size")
    module = module_with("def get_pp_indices(num_hidden_layers, pp_rank, pp_size):\n"
                         "    return 0, num_hidden_layers\n")
    wrap_function(module, "get_pp_indices", params, make)
    wrap_function(module, "get_pp_indices", params, make)       # idempotent
    assert module.get_pp_indices(30, 0, 1) == (0, 3)
    changed = module_with("def get_pp_indices(num_layers, rank, size):\n    return 0, 1\n")
    with pytest.raises(EngineCompatibilityError, match="expected parameters"):
        wrap_function(changed, "get_pp_indices", params, make)
    with pytest.raises(EngineCompatibilityError, match="does not exist"):
        wrap_function(changed, "missing", params, make)


@pytest.mark.slow
def test_register_is_gated_and_idempotent():
    out = _run("""
        import os
        from qrhead_vllm import plugin, patches
        plugin.register()
        assert patches.PATCHED == {}, "patched without QRHEAD_ENABLED"
        os.environ["QRHEAD_ENABLED"] = "1"
        plugin.register(); plugin.register()
        names = sorted(patches.PATCHED)
        assert any(n.endswith("CPUAttentionBackendImpl.forward") for n in names), names
        assert any(n.endswith("GPUModelRunner.execute_model") for n in names), names
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackendImpl as C
        # a wrapper around the original, not a copy of it
        assert C.forward.__wrapped__ is patches.PATCHED[
            "vllm.v1.attention.backends.cpu_attn.CPUAttentionBackendImpl.forward"]
        print("OK")
    """)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


@pytest.mark.slow
def test_unsupported_version_fails_at_startup():
    out = _run("""
        import vllm
        vllm.__version__ = "0.31.0"
        from qrhead_vllm import QRHeadRanker, EngineCompatibilityError
        try:
            QRHeadRanker("smollm2-135m", heads="all", backend="vllm", dtype="float32")
        except EngineCompatibilityError as e:
            print("REFUSED:", e)
    """)
    assert "REFUSED: qrhead-vllm supports vLLM" in out.stdout, out.stderr[-3000:]


def _refusal_at_startup(setup: str) -> str:
    """Run ``setup`` (which tampers with kv_layout), then start an in-process engine; returns
    the refusal it printed (the assertion shows the engine's output when there was none)."""
    out = _run(textwrap.dedent(setup) + textwrap.dedent("""
        from qrhead_vllm import QRHeadRanker
        try:
            # fp32: ISA 'vec' on every x86 CPU (bf16 would pick 'amx' on AMX CPUs)
            QRHeadRanker("smollm2-135m", heads="all", backend="vllm", max_model_len=2048,
                         dtype="float32")
        except Exception as e:
            print("REFUSED:", type(e).__name__, e)
    """))
    assert "REFUSED:" in out.stdout, out.stdout[-2000:] + out.stderr[-3000:]
    return out.stdout


@pytest.mark.slow
def test_unverified_isa_fails_at_startup():
    # Pretend the CPU ISA in use ('vec') is one we never verified.
    refusal = _refusal_at_startup("""
        from qrhead_vllm.integration.vllm import kv_layout
        del kv_layout.VERIFIED[("CPUAttentionBackendImpl", "vec")]
    """)
    assert "CPU attention ISA 'vec' is not verified" in refusal


@pytest.mark.slow
def test_corrupted_layout_view_fails_the_startup_probe():
    # A view that reads the keys transposed inside each block: the probe must catch it before
    # any request is scored (the per-request self-check would only catch it per request).
    refusal = _refusal_at_startup("""
        from qrhead_vllm.integration.vllm import kv_layout
        def transposed(kv_cache):
            nb, hkv, bs, two_d = kv_cache.shape
            d = two_d // 2
            keys = kv_cache.view(nb, hkv, 2 * bs * d)[:, :, : bs * d].view(nb, hkv, bs, d)
            return keys.permute(0, 2, 1, 3)
        kv_layout.VERIFIED[("CPUAttentionBackendImpl", "vec")] = transposed
    """)
    assert "KV layout probe failed" in refusal


@pytest.mark.parametrize("engine_arg,message", [
    ({"pipeline_parallel_size": 2}, "does not support pipeline_parallel_size=2"),
    ({"kv_cache_dtype": "fp8"}, "cannot score from a fp8 KV cache"),
])
def test_unsupported_engine_shapes_are_refused_before_start(engine_arg, message):
    from qrhead_vllm.integration.vllm.engine_args import engine_kwargs
    with pytest.raises(EngineCompatibilityError, match=message):
        engine_kwargs("unused-model-path", "float32", **engine_arg)


def test_worker_refuses_pipeline_parallelism_at_kv_cache_init():
    from types import SimpleNamespace

    from qrhead_vllm.patches.vllm_0_32 import check_parallel_config
    check_parallel_config(SimpleNamespace(pipeline_parallel_size=1))
    with pytest.raises(EngineCompatibilityError, match="pipeline_parallel_size=4"):
        check_parallel_config(SimpleNamespace(pipeline_parallel_size=4))
