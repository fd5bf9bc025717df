"""The SGLang plugin's start-up contract: registered through SGLang's own entry point, gated by
QRHEAD_ENABLED=1, idempotent, wraps (never copies), version-checked against the range in our
metadata, and refuses at start-up what the capture cannot read, with a message saying why."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from importlib import metadata
from types import SimpleNamespace

import pytest
import torch

from qrhead_vllm.errors import EngineCompatibilityError, InsufficientMemoryError
from qrhead_vllm.integration.sglang import kv_layout
from qrhead_vllm.integration.sglang import VERSIONS

check_sglang_version, supported_range = VERSIONS.check, VERSIONS.supported_range


def _run(code: str, timeout: int = 900, **env) -> subprocess.CompletedProcess:
    # Engines started earlier in this process set QRHEAD_ENABLED=1; start each probe clean.
    base = {k: v for k, v in os.environ.items() if not k.startswith("QRHEAD_ENABLED")}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env={**base, **env},
                          capture_output=True, text=True, timeout=timeout)


def test_entry_point_is_sglangs_plugin_group():
    eps = {ep.name: ep.value for ep in metadata.entry_points(group="sglang.srt.plugins")}
    assert eps.get("qrhead") == "qrhead_vllm.plugin_sglang:register"


def test_supported_range_comes_from_our_metadata():
    assert "0.5.23" in supported_range() and "0.6.0" not in supported_range()
    import sglang
    assert check_sglang_version(sglang.__version__) == "sglang_0_5"


def test_unsupported_version_is_refused(monkeypatch):
    with pytest.raises(EngineCompatibilityError, match="supports SGLang .*0.5.23.*0.4.9 is inst"):
        check_sglang_version("0.4.9")
    monkeypatch.setenv("QRHEAD_SKIP_VERSION_CHECK", "1")
    assert check_sglang_version("0.6.1") == "sglang_0_5"   # nearest shipped hooks


@pytest.mark.slow
def test_register_is_gated_idempotent_and_wraps():
    out = _run("""
        import os
        from qrhead_vllm import plugin_sglang, patches
        plugin_sglang.register()
        assert patches.PATCHED == {}, "patched without QRHEAD_ENABLED"
        os.environ["QRHEAD_ENABLED"] = "1"
        plugin_sglang.register(); plugin_sglang.register()
        names = sorted(patches.PATCHED)
        for target in ("RadixAttention.forward", "TpModelWorker.forward_batch_generation",
                       "Req._compute_max_prefix_len", "ModelRunner.init_cuda_graphs"):
            assert any(n.endswith(target) for n in names), (target, names)
        from sglang.srt.layers.radix_attention import RadixAttention as R
        # a wrapper around the original, not a copy of it
        assert R.forward.__wrapped__ is patches.PATCHED[
            "sglang.srt.layers.radix_attention.RadixAttention.forward"]
        print("OK")
    """)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


@pytest.mark.slow
def test_refused_registration_makes_the_scheduler_fail_at_start():
    # SGLang's plugin loader swallows a plugin's exception; the refusal must still stop the
    # engine at start-up (the scheduler's constructor raises it), never serve without hooks.
    out = _run("""
        import os, sglang
        sglang.__version__ = "0.4.9"
        os.environ["QRHEAD_ENABLED"] = "1"
        from qrhead_vllm import plugin_sglang
        from qrhead_vllm.errors import EngineCompatibilityError
        try:
            plugin_sglang.register()
        except EngineCompatibilityError as e:
            print("REFUSED:", e)
        from sglang.srt.managers.scheduler import Scheduler
        try:
            Scheduler(None, None)
        except EngineCompatibilityError as e:
            print("SCHEDULER:", e)
    """)
    assert "REFUSED: qrhead-vllm supports SGLang" in out.stdout, out.stderr[-3000:]
    assert "SCHEDULER: qrhead-vllm supports SGLang" in out.stdout, out.stderr[-3000:]


@pytest.mark.slow
def test_python_api_refuses_an_unsupported_version_before_start():
    out = _run("""
        import sglang
        sglang.__version__ = "0.4.9"
        from qrhead_vllm import QRHeadRanker, EngineCompatibilityError
        try:
            QRHeadRanker("smollm2-135m", heads="all", backend="sglang")
        except EngineCompatibilityError as e:
            print("REFUSED:", e)
    """)
    assert "REFUSED: qrhead-vllm supports SGLang" in out.stdout, out.stderr[-3000:]


@pytest.mark.parametrize("engine_arg,message", [
    ({"tp_size": 2}, "tp_size=2"),
    ({"pp_size": 2}, "pp_size=2"),
    ({"kv_cache_dtype": "fp8_e4m3"}, "fp8_e4m3 KV cache"),
    ({"speculative_algorithm": "EAGLE"}, "speculative decoding"),
    ({"enable_dp_attention": True}, "data-parallel attention"),
])
def test_unsupported_engine_shapes_are_refused_before_start(engine_arg, message):
    from qrhead_vllm.integration.sglang.engine_args import engine_kwargs
    with pytest.raises(EngineCompatibilityError, match=message):
        engine_kwargs("unused-model-path", "float32", **engine_arg)


def _runner(**changes):
    """A model runner's start-up state as the checks read it (pure-function unit)."""
    pool_class = type("MHATokenToKVPool", (SimpleNamespace,), {})   # checked by class name
    pool = pool_class(store_dtype=torch.float32, dtype=torch.float32, use_hnd=False,
                      kv_cache_layout="nhd", is_quantized_kv_cache=False,
                      requires_physical_write_loc=False)
    runner = SimpleNamespace(server_args=SimpleNamespace(), prefill_cuda_graph_runner=None,
                             attn_backend=type("TorchNativeAttnBackend", (), {})(),
                             token_to_kv_pool=pool, is_hybrid_swa=False,
                             model=torch.nn.Module())
    for key, value in changes.items():
        target, attr = (pool, key[5:]) if key.startswith("pool_") else (runner, key)
        setattr(target, attr, value)
    return runner


@pytest.mark.parametrize("changes,message", [
    ({"prefill_cuda_graph_runner": type("PrefillCudaGraphRunner", (), {})()},
     "prefill CUDA graphs are on"),
    ({"is_hybrid_swa": True}, "hybrid sliding-window KV pool"),
    ({"pool_store_dtype": torch.uint8}, "quantised KV cache"),
    ({"pool_use_hnd": True, "pool_kv_cache_layout": "hnd"}, "the hnd KV layout"),
    ({"pool_requires_physical_write_loc": True}, "unified memory pool"),
    ({"attn_backend": type("IntelAMXAttnBackend", (), {})()}, "IntelAMXAttnBackend was never"),
])
def test_startup_refusals_name_the_reason(changes, message):
    kv_layout.check_runner(_runner())             # the baseline passes
    with pytest.raises(EngineCompatibilityError, match=message):
        kv_layout.check_runner(_runner(**changes))


def test_soft_capped_attention_is_refused():
    layer = SimpleNamespace(layer_id=3, logit_cap=30.0)
    with pytest.raises(EngineCompatibilityError, match="layer 3 uses soft-capped logits"):
        kv_layout._check_layer(layer)


def test_memory_is_sized_by_need(monkeypatch, bundled_model_path):
    from qrhead_vllm.integration.sglang import engine_args
    path = bundled_model_path("smollm2-135m")
    monkeypatch.setattr(engine_args, "available_bytes", lambda: 11 * 2**30)   # a ~11 GiB node
    args = engine_args.cpu_memory_args(path, "float32", 4096, 2)
    # The pool is capped by need; the fraction is only the ceiling SGLang checks against.
    assert args == {"max_total_tokens": 8192, "mem_fraction_static": engine_args.FRACTION}
    # weights (0.5 GiB) + 8192 tokens x 45 KiB (0.35 GiB) + 1 GiB headroom > 1.5 GiB
    monkeypatch.setattr(engine_args, "available_bytes", lambda: 3 * 2**29)
    with pytest.raises(InsufficientMemoryError, match="mem_fraction_static"):
        engine_args.cpu_memory_args(path, "float32", 4096, 2)


@pytest.mark.slow
def test_scheduler_refusal_stops_the_engine_at_start():
    # An engine started without our Python API (so without its pre-checks) on a layout we
    # cannot read: the scheduler's start-up check refuses it and the engine does not start.
    out = _run("""
        import os
        os.environ["QRHEAD_ENABLED"] = "1"
        import sglang
        from qrhead_vllm.models import resolve_model
        sglang.Engine(model_path=resolve_model("smollm2-135m").path, device="cpu",
                      attention_backend="torch_native", dtype="float32",
                      mem_fraction_static=0.3, max_total_tokens=2048, log_level="error")
        print("ENGINE STARTED")
    """, SGLANG_USE_HND_KVCACHE="1")
    # The dying scheduler makes SGLang tear down its whole process tree, launcher included.
    assert out.returncode != 0 and "ENGINE STARTED" not in out.stdout, out.stdout[-2000:]
    assert "qrhead-vllm cannot score on this SGLang engine: the hnd KV layout" in out.stderr, (
        out.stderr[-4000:])
