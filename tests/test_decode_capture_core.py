"""Decode-time capture without an engine: the core (span mass of each generated token's row),
the driver keeping a generating request through its decode steps, vLLM's adapter delivering
and cleaning up, the wire format, and SGLang's refusal.

The fake engine (tests/test_core_driver.py) computes prompt + generated positions of random
q/k into a shuffled paged cache; the reference is the dense causal softmax of every position
written here, summed over each document span."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from test_core_attention import NUM_HEADS, NUM_KV_HEADS, SCALE, random_qk
from test_core_driver import HEADS, LAYERS, SHAPE, FakeEngine

from qrhead_vllm.core.attention import span_mass_rows, span_matrix
from qrhead_vllm.core.driver import CaptureDriver, StepRow, spec_error
from qrhead_vllm.integration.request_spec import (RequestSpec, decode_key, merge_results,
                                                  read_spec)
from qrhead_vllm.integration.vllm.capture import VLLMCapture

GROUP = NUM_HEADS // NUM_KV_HEADS
SPANS = ((1, 5), (6, 11), (12, 15))
PROMPT, GENERATED = 20, 6          # rows for positions 19..24: the last prompt token + 5 fed


def dense_mass(q: torch.Tensor, k: torch.Tensor, first: int, spans=SPANS) -> torch.Tensor:
    """``[rows, H, N]``: full causal softmax of every head, rows ``first..``, summed per span."""
    t = q.shape[1]
    logits = (q @ k.repeat_interleave(GROUP, dim=0).transpose(1, 2)) * SCALE     # [H, T, T]
    logits = logits.masked_fill(torch.arange(t)[None, :] > torch.arange(t)[:, None], -torch.inf)
    probs = torch.softmax(logits, dim=-1)[:, first:]                             # [H, R, T]
    return torch.stack([probs[..., a:b].sum(-1) for a, b in spans], -1).transpose(0, 1)


def expected(engine: FakeEngine, rid: str) -> torch.Tensor:
    """``[R, len(HEADS), N]`` in the request's head order."""
    return torch.stack([dense_mass(*engine.qk[rid][layer], PROMPT - 1)[:GENERATED, head]
                        for layer, head in HEADS], 1)


def decode_rows(tracked) -> torch.Tensor:
    res = tracked.decode_result()
    assert res.error is None, res.error
    out = torch.empty_like(res.rows)
    out[res.index] = res.rows
    return out.permute(1, 0, 2)                                       # [R, H, N]


def test_span_mass_rows_equal_dense_attention():
    q, k = random_qk(24, seed=3)
    heads = [6, 1, 3, 4]
    rows = torch.arange(15, 24)
    got = span_mass_rows(q[heads][:, rows].transpose(0, 1), k, rows,
                         [h // GROUP for h in heads], SCALE, span_matrix(SPANS, 16))
    torch.testing.assert_close(got, dense_mass(q, k, 15)[:, heads], atol=1e-6, rtol=0)


def admit_generating(driver: CaptureDriver, rid: str, spans=SPANS):
    return driver.admit(rid, RequestSpec(PROMPT - 4, HEADS, f"key-{rid}", spans), PROMPT, SHAPE)


def generate(engine: FakeEngine, driver: CaptureDriver, rids, prefill_chunk=12):
    """Chunked prefill then one token per step, every request in the same steps, like vLLM."""
    done = {}
    for first in range(0, PROMPT, prefill_chunk):
        n = min(prefill_chunk, PROMPT - first)
        done.update(engine.step(driver, {r: (first, n) for r in rids}))
    for pos in range(PROMPT, PROMPT + GENERATED - 1):
        assert engine.step(driver, {r: (pos, 1) for r in rids}) == {}
    return done


def test_batched_decode_steps_equal_dense_attention():
    engine = FakeEngine({"a": PROMPT + GENERATED - 1, "b": PROMPT + GENERATED - 1,
                         "plain": PROMPT + GENERATED - 1})
    driver = CaptureDriver()
    admit_generating(driver, "a")
    driver.admit("b", RequestSpec(PROMPT - 4, HEADS, "key-b"), PROMPT, SHAPE)   # no decode
    done = generate(engine, driver, ["a", "b", "plain"])
    assert set(done) == {"a", "b"} and set(driver.requests) == {"a"}   # b left with its prefill
    [a] = driver.finish(["a", "b", "plain"])
    assert a.decode_ready and not driver.requests
    got = decode_rows(a)
    assert got.shape == (GENERATED, len(HEADS), len(SPANS))
    torch.testing.assert_close(got, expected(engine, "a"), atol=1e-6, rtol=0)


def test_recomputed_positions_are_overwritten_and_gaps_are_errors():
    engine, driver = FakeEngine({"a": PROMPT + GENERATED + 4}), CaptureDriver()
    a = admit_generating(driver, "a")
    engine.step(driver, {"a": (0, PROMPT)})
    engine.step(driver, {"a": (PROMPT, 1)})
    engine.step(driver, {"a": (0, PROMPT + 2)})        # preempted: recomputed from scratch
    for pos in range(PROMPT + 2, PROMPT + GENERATED - 1):
        engine.step(driver, {"a": (pos, 1)})
    torch.testing.assert_close(decode_rows(a), expected(engine, "a"), atol=1e-6, rtol=0)
    engine.step(driver, {"a": (PROMPT + GENERATED + 3, 1)})     # steps the hook never saw
    assert "were never captured" in a.decode_result().error


def test_spec_wire_format_and_validation():
    spec = RequestSpec(3, ((0, 1),), "k", ((1, 4), (5, 9)))
    params = spec.as_params()
    assert '"doc_spans": [1, 4, 5, 9]' in params["qrhead"]     # flat ints: msgpack-friendly
    assert read_spec(params) == (spec, None)
    assert read_spec({"qrhead": '{"span_start": 1, "heads": [], "doc_spans": [1, 2, 3]}'}
                     )[1].endswith("doc_spans has 3 numbers, not start/end pairs")
    assert "doc_spans [(5, 30)] are not" in spec_error(RequestSpec(3, HEADS, "k", ((5, 30),)),
                                                       20, SHAPE)
    assert decode_key("k") == "k/decode"


def test_merge_puts_decode_rows_back_in_head_order():
    rows = torch.arange(24, dtype=torch.float32).reshape(2, 4, 3)
    import base64
    payload = {"index": [1, 0], "shape": [2, 4, 3], "error": None,
               "rows": base64.b64encode(rows.numpy().tobytes()).decode()}
    out = merge_results([payload], 2, "missing")
    assert torch.equal(out[0], rows[1]) and torch.equal(out[1], rows[0])


# --- vLLM's adapter: delivery and cleanup, driven through its own step calls -----------------

class Worker:
    """A VLLMCapture fed by the fake engine through the calls the patches make."""

    def __init__(self, lengths):
        self.capture, self.engine = VLLMCapture(), FakeEngine(lengths)

    def admit(self, rid: str, spans=SPANS) -> None:
        self.capture.driver.admit(rid, RequestSpec(PROMPT - 4, HEADS, f"key-{rid}", spans),
                                  PROMPT, SHAPE)
        if spans:
            self.capture._decoding[decode_key(f"key-{rid}")] = rid

    def step(self, chunks: dict, finished=()) -> None:
        self.capture.begin_step(None, SimpleNamespace(
            finished_req_ids=set(finished),
            num_scheduled_tokens={rid: n for rid, (_, n) in chunks.items()}))
        with torch.inference_mode():       # as vLLM runs its steps; clients read outside it
            if chunks:
                self.engine.step(_EndLeftToAdapter(self.capture.driver), chunks)
            else:                          # an empty step: it only carries the finished ids
                self.capture.driver.begin_step([])
            self.capture.end_step()


class _EndLeftToAdapter:
    """The driver as the fake engine drives it, but its step is closed by the adapter."""

    def __init__(self, driver):
        self.driver = driver

    def __getattr__(self, name):
        return getattr(self.driver, name)

    def end_step(self):
        return []


def test_prefill_poppable_while_decoding_and_decode_delivered_at_the_end():
    w = Worker({"a": PROMPT + GENERATED - 1})
    w.admit("a")
    w.step({"a": (0, PROMPT)})
    assert w.capture.pop(["key-a"])["key-a"]["error"] is None      # while it keeps decoding
    for pos in range(PROMPT, PROMPT + GENERATED - 1):
        w.step({"a": (pos, 1)})
    assert w.capture.stats() == {"active": 1, "done": 0}
    w.step({}, finished=["a"])                 # the worker learns the request ended
    assert w.capture.stats() == {"active": 0, "done": 1}
    payload = w.capture.pop([decode_key("key-a")])[decode_key("key-a")]
    assert payload["shape"] == [len(HEADS), GENERATED, len(SPANS)]
    assert w.capture.stats() == {"active": 0, "done": 0} and not w.capture.abandoned


def test_a_decode_key_popped_before_the_worker_learns_the_end_takes_the_rows():
    w = Worker({"a": PROMPT + GENERATED - 1})
    w.admit("a")
    w.step({"a": (0, PROMPT)})
    w.step({"a": (PROMPT, 1)})
    got = w.capture.pop(["key-a", decode_key("key-a")])
    assert got[decode_key("key-a")]["shape"] == [len(HEADS), 2, len(SPANS)]
    w.step({}, finished=["a"])
    assert w.capture.stats() == {"active": 0, "done": 0} and not w.capture._skipped


def test_an_aborted_generation_leaves_nothing_behind():
    w = Worker({"a": PROMPT + GENERATED - 1, "b": PROMPT + GENERATED - 1})
    w.admit("a")
    w.admit("b")
    w.step({"a": (0, 12), "b": (0, PROMPT)})
    # the client of a cancels mid-prefill, b's mid-decode: each pops both of its keys
    w.capture.pop(["key-a", decode_key("key-a")])
    w.step({"b": (PROMPT, 1)})
    w.capture.pop(["key-b", decode_key("key-b")])
    w.step({}, finished=["a", "b"])
    assert w.capture.stats() == {"active": 0, "done": 0}
    assert not w.capture._decoding and not w.capture._skipped


def test_an_abort_the_client_never_popped_is_bounded_like_any_result():
    w = Worker({"a": PROMPT + GENERATED - 1})
    w.admit("a")
    w.step({"a": (0, 8)})
    w.step({}, finished=["a"])                 # aborted mid-prefill: no decode result is due
    assert w.capture.stats() == {"active": 0, "done": 0} and not w.capture._decoding


def test_ordinary_requests_are_read_once():
    capture = VLLMCapture()
    reads = []
    state = SimpleNamespace(sampling_params=SimpleNamespace(extra_args=None))
    runner = SimpleNamespace(input_batch=SimpleNamespace(
        req_ids=["plain"], num_reqs=1, num_computed_tokens_cpu=[0]),
        requests=SimpleNamespace(get=lambda rid: reads.append(rid) or state))
    for _ in range(3):
        capture.begin_step(runner, SimpleNamespace(finished_req_ids=set(),
                                                   num_scheduled_tokens={"plain": 1}))
        assert list(capture._rows()) == []
        capture.end_step()
    assert reads == ["plain"]
    capture.begin_step(runner, SimpleNamespace(finished_req_ids={"plain"},
                                               num_scheduled_tokens={}))
    assert not capture._skipped


# --- SGLang: asked for decode-time capture, it refuses with the reason -------------------------

def test_sglang_refuses_decode_capture_with_the_reason():
    from qrhead_vllm.core.driver import ModelShape
    from qrhead_vllm.integration.sglang.capture import SGLangCapture
    from qrhead_vllm.integration.request_spec import result_rows
    capture = SGLangCapture()
    capture.shape = ModelShape(NUM_HEADS, NUM_KV_HEADS, 4)
    class Req(SimpleNamespace):       # SGLang's Req is weakly referenced
        pass

    req = Req(
        rid="r", origin_input_ids=list(range(PROMPT)), customized_info=None,
        sampling_params=SimpleNamespace(custom_params=RequestSpec(
            PROMPT - 4, HEADS, None, SPANS).as_params()), finished=lambda: False)
    assert capture._admit(req)
    capture.driver.begin_step([StepRow("r", 0, PROMPT, 0, 0)])
    capture.end_step()
    [payload] = req.customized_info["qrhead"]
    assert "not implemented on the SGLang engine" in payload["error"]
    assert result_rows(payload).numel() == 0
    with pytest.raises(Exception, match="not implemented on the SGLang engine"):
        merge_results([payload], len(HEADS), "missing")


def test_sglang_backend_refuses_generation_with_captures():
    from qrhead_vllm.errors import CaptureError
    from qrhead_vllm.integration.sglang.backend import SGLangBackend
    backend = SGLangBackend.__new__(SGLangBackend)      # the refusal needs no engine
    with pytest.raises(CaptureError, match="decode-time capture .* not implemented on the SGLang"):
        backend.generate_scored(None, None, HEADS, decode=True)
    with pytest.raises(CaptureError, match="serve the model on vLLM"):
        backend.generate_scored(None, None, HEADS)


def test_deferred_rows_are_computed_before_their_blocks_are_reused():
    w = Worker({"a": PROMPT + GENERATED - 1})
    w.admit("a")
    w.step({"a": (0, PROMPT)})
    for pos in range(PROMPT, PROMPT + GENERATED - 1):
        w.step({"a": (pos, 1)})
    assert w.capture.driver.requests["a"].decode.pending == GENERATED - 1
    # a step that does not run it (preempted; or finished, named a step later): vLLM may hand
    # its blocks to another request, whose keys this step's forward writes over them
    w.capture.begin_step(None, SimpleNamespace(finished_req_ids=set(), num_scheduled_tokens={}))
    for layer in LAYERS:
        w.engine.cache[layer].normal_()
    rows = merge_results([w.capture.pop([decode_key("key-a")])[decode_key("key-a")]],
                         len(HEADS), "missing").permute(1, 0, 2)
    torch.testing.assert_close(rows, expected(w.engine, "a"), atol=1e-6, rtol=0)


def test_deferred_rows_whose_keys_do_not_read_back_are_an_error():
    engine, driver = FakeEngine({"a": PROMPT + GENERATED - 1}), CaptureDriver()
    a = admit_generating(driver, "a")
    engine.step(driver, {"a": (0, PROMPT)})
    engine.step(driver, {"a": (PROMPT, 1)}, corrupt=True)
    assert a.decode.pending == 1
    assert "self-check failed" in a.decode_result().error


def test_rows_so_far_are_read_without_ending_the_capture():
    w = Worker({"a": PROMPT + GENERATED - 1})
    w.admit("a")
    w.step({"a": (0, PROMPT)})
    w.step({"a": (PROMPT, 1)})
    key = decode_key("key-a")
    early = merge_results([w.capture.peek([key])[key]], len(HEADS), "missing")
    assert early.shape == (len(HEADS), 2, len(SPANS))
    for pos in range(PROMPT + 1, PROMPT + GENERATED - 1):
        w.step({"a": (pos, 1)})
    final = merge_results([w.capture.pop([key])[key]], len(HEADS), "missing").permute(1, 0, 2)
    torch.testing.assert_close(final, expected(w.engine, "a"), atol=1e-6, rtol=0)
    torch.testing.assert_close(early.permute(1, 0, 2), final[:2], atol=0, rtol=0)
