"""The vLLM worker's capture state goes back to empty on every way a scoring request can end
(issue 27): finished and taken, aborted mid-prefill, given up by its client while the worker
still computed its last step. Driven through VLLMCapture's own step calls, without an engine;
tests/test_serve_capture_gauges.py checks the same counts on the real app."""

from __future__ import annotations

from types import SimpleNamespace

from qrhead_vllm import metrics
from qrhead_vllm.core.driver import StepRow
from qrhead_vllm.integration.request_spec import RequestSpec
from qrhead_vllm.integration.vllm.capture import MAX_ABANDONED, VLLMCapture

PROMPT = 8


def admitted(capture: VLLMCapture, request_id: str, key: str) -> None:
    """A scoring request in the driver's table. It carries an error so that it finishes at its
    last prompt token without tensors: the bookkeeping is what is under test here."""
    spec = RequestSpec(2, ((0, 0),), key)
    capture.driver.admit(request_id, spec, PROMPT, None, error="no tensors in this test")


def last_step(capture: VLLMCapture, request_id: str) -> None:
    """The worker computes the request's last prompt token and closes the step."""
    capture.begin_step(None, SimpleNamespace(finished_req_ids=set(), num_scheduled_tokens={}))
    capture.driver.begin_step([StepRow(request_id, 0, PROMPT, 0, 0)])
    capture.end_step()


def test_a_finished_request_is_held_until_taken_then_gone():
    capture = VLLMCapture()
    admitted(capture, "r1", "k1")
    assert capture.stats() == {"active": 1, "done": 0}
    last_step(capture, "r1")
    assert capture.stats() == {"active": 0, "done": 1}
    assert capture.pop(["k1"])["k1"]["error"] == "no tensors in this test"
    assert capture.stats() == {"active": 0, "done": 0}
    assert not capture.abandoned


def test_an_aborted_request_leaves_the_table():
    capture = VLLMCapture()
    admitted(capture, "r1", "k1")
    admitted(capture, "r2", "k2")
    # vLLM names aborted and finished requests in the next step's scheduler output
    capture.begin_step(None, SimpleNamespace(finished_req_ids={"r1"}, num_scheduled_tokens={}))
    capture.end_step()
    assert set(capture.driver.requests) == {"r2"}


def test_a_result_its_client_gave_up_on_is_dropped_when_it_comes():
    capture = VLLMCapture()
    admitted(capture, "r1", "k1")
    assert capture.pop(["k1"]) == {}          # cancelled: the client pops before the result
    last_step(capture, "r1")                  # the step already under way finishes it
    assert capture.stats() == {"active": 0, "done": 0}
    assert not capture.abandoned              # the mark is spent with the result


def test_abandoned_keys_are_bounded():
    capture = VLLMCapture()
    capture.pop([f"k{i}" for i in range(MAX_ABANDONED + 10)])   # e.g. requests vLLM refused
    assert len(capture.abandoned) == MAX_ABANDONED
    assert "k0" not in capture.abandoned and f"k{MAX_ABANDONED + 9}" in capture.abandoned


def test_serve_capture_gauges_sum_the_ranks():
    import prometheus_client

    metrics.record_capture_state("gauge-test", [{"active": 2, "done": 1}, {"active": 1, "done": 0}])
    value = prometheus_client.REGISTRY.get_sample_value
    assert value("qrhead_capture_active_requests", {"model_name": "gauge-test"}) == 3
    assert value("qrhead_capture_held_results", {"model_name": "gauge-test"}) == 1
    metrics.record_capture_state("gauge-test", {"active": 0})        # SGLang: one dict, no done
    assert value("qrhead_capture_active_requests", {"model_name": "gauge-test"}) == 0
    assert value("qrhead_capture_held_results", {"model_name": "gauge-test"}) == 0
