"""SpanCapture, the engine-agnostic per-request capture: chunked steps add up to the dense
reference, failures are loud (a layer never captured, keys that do not read back, a recomputed
slice), and the per-layer path never synchronises with the host."""

from __future__ import annotations

import torch

from test_core_attention import (GROUP, NUM_HEADS, NUM_KV_HEADS, SCALE, dense_span_rows,
                                 random_qk)

from qrhead_vllm.core import SpanCapture, layer_heads

T, SPAN = 40, 30
HEADS = [(0, 6), (0, 1), (2, 3), (2, 4)]   # two layers, both KV groups, unsorted


def capture() -> SpanCapture:
    return SpanCapture(SPAN, T, layer_heads(HEADS, NUM_HEADS, NUM_KV_HEADS))


def run_step(cap: SpanCapture, qk: dict, first: int, n: int, layers=(0, 2)) -> bool:
    """Drive one engine step over prompt positions [first, first+n) like an integration does."""
    assert cap.begin_step(first, n)
    offset, count = cap.span_slice()
    for layer in layers:
        q, k = qk[layer]
        rows = q[:, first + offset:first + offset + count].transpose(0, 1)   # [n, H, D]
        cap.add_layer(layer, rows, k[:, :cap.step_end], SCALE)
    return cap.end_step()


def expected(qk: dict) -> torch.Tensor:
    rows = []
    for layer, head in HEADS:
        q, k = qk[layer]
        rows.append(dense_span_rows(q, k, SPAN)[head] / (T - SPAN))
    return torch.stack(rows)


def ordered(result) -> torch.Tensor:
    out = torch.empty_like(result.rows)
    out[result.index] = result.rows
    return out


QK = {0: random_qk(T, seed=1), 2: random_qk(T, seed=2)}


def test_one_step_equals_dense_attention():
    cap = capture()
    assert run_step(cap, QK, 0, T)
    res = cap.result()
    assert res.error is None
    torch.testing.assert_close(ordered(res), expected(QK), atol=1e-6, rtol=0)


def test_chunks_splitting_the_span_add_up():
    cap = capture()
    assert not cap.begin_step(0, 20)          # before the span: nothing to capture
    assert not run_step(cap, QK, 20, 15)      # the span starts inside this chunk
    assert run_step(cap, QK, 35, 5)
    torch.testing.assert_close(ordered(cap.result()), expected(QK), atol=1e-6, rtol=0)


def test_recomputed_slice_starts_over():
    cap = capture()
    run_step(cap, QK, 0, 35)
    assert run_step(cap, QK, 25, 15)          # preempted: positions 25.. computed again
    torch.testing.assert_close(ordered(cap.result()), expected(QK), atol=1e-6, rtol=0)


def test_span_rows_never_computed_are_an_error():
    cap = capture()
    assert run_step(cap, QK, 32, 8)           # a cache hit covered 0..31: rows 30, 31 lost
    assert "positions 30..31 were never computed" in cap.result().error


def test_a_layer_never_captured_is_an_error():
    cap = capture()
    run_step(cap, QK, 0, T, layers=(0,))      # layer 2 holds heads but never ran
    res = cap.result()
    assert res.error and "layers [2]" in res.error and res.rows.numel() == 0


def test_keys_that_do_not_read_back_are_an_error():
    cap = capture()
    k = QK[0][1]
    cap.check_keys(k[:, SPAN:].transpose(0, 1), k[:, SPAN:].transpose(0, 1))
    run_step(cap, QK, 0, T)
    assert cap.result().error is None
    cap = capture()
    cap.check_keys(k[:, SPAN:].transpose(0, 1), k[:, SPAN:].transpose(0, 1) + 1e-3)
    run_step(cap, QK, 0, T)
    assert "self-check failed" in cap.result().error


def test_layer_heads_sorts_each_layer_by_kv_group():
    lh = layer_heads(HEADS, NUM_HEADS, NUM_KV_HEADS)
    assert lh[0].q_heads == (1, 6) and lh[0].index == (1, 0)
    assert lh[0].kv_heads == (1 // GROUP, 6 // GROUP)


# --- no host synchronisation in the per-layer path ----------------------------------------------
SYNCING = {"item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__",
           "nonzero", "unique", "equal", "__len__"}


class NoSync(torch.Tensor):
    """A tensor that records every operation which would wait for the device (on CUDA)."""

    calls: list[str] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if name in SYNCING or (name == "to" and any(str(a) == "cpu" for a in args[1:])):
            cls.calls.append(name)
        return super().__torch_function__(func, types, args, kwargs or {})


def test_per_layer_path_never_syncs_with_the_host():
    qk = {layer: (q.as_subclass(NoSync), k.as_subclass(NoSync)) for layer, (q, k) in QK.items()}
    cap = capture()
    NoSync.calls.clear()
    k = qk[0][1]
    cap.check_keys(k[:, SPAN:].transpose(0, 1), k[:, SPAN:].transpose(0, 1))
    run_step(cap, qk, 20, 15)
    run_step(cap, qk, 35, 5)
    assert NoSync.calls == [], f"host syncs in the per-layer path: {NoSync.calls}"
    res = cap.result()                         # the one place that copies to the host
    assert res.error is None and NoSync.calls
    torch.testing.assert_close(ordered(res).as_subclass(torch.Tensor), expected(QK), atol=1e-6,
                               rtol=0)
