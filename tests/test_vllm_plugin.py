"""The plugin's start-up contract: gated, idempotent, wraps (never copies), and fails loudly
at start-up on an unsupported vLLM version or an unknown KV-cache layout."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from qrhead_vllm.errors import EngineCompatibilityError
from qrhead_vllm.integration.vllm.version import check_vllm_version, supported_range
from qrhead_vllm.patches import wrap_method


def _run(code: str, **env) -> subprocess.CompletedProcess:
    import os
    # Engines started earlier in this test process set QRHEAD_ENABLED=1; start each probe clean.
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
    assert check_vllm_version("0.31.2") == "vllm_0_31"


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
            QRHeadRanker("smollm2-135m", heads="all", backend="vllm")
        except EngineCompatibilityError as e:
            print("REFUSED:", e)
    """)
    assert "REFUSED: qrhead-vllm supports vLLM" in out.stdout, out.stderr[-3000:]


@pytest.mark.slow
def test_unknown_kv_layout_fails_at_startup():
    # Pretend the CPU ISA in use ('vec') has a layout we never verified.
    out = _run("""
        from qrhead_vllm.integration.vllm import kv_layout
        kv_layout.CPU_KEY_VIEWS.clear()
        from qrhead_vllm import QRHeadRanker
        try:
            QRHeadRanker("smollm2-135m", heads="all", backend="vllm", max_model_len=2048)
        except Exception as e:
            print("REFUSED:", type(e).__name__, e)
    """)
    assert "REFUSED:" in out.stdout and "has not verified" in out.stdout, (
        out.stdout[-2000:] + out.stderr[-3000:])
