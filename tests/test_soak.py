"""The soak bench's bounds (bench/serve/soak_report.py:check) on synthetic series, so they can
be seen to fail; then the 3-minute soak against the session's real app with --check's bounds."""

from __future__ import annotations

import json

import pytest

from bench.serve.soak import parse_args, run
from bench.serve.soak_report import Bounds, Sample, check, markdown

WARMUP = 60


def samples(worker_mb: float, worker_fds: int = 40, proxy_mb: float = 190.0,
            gauges: dict | None = None) -> list[Sample]:
    start = Sample(0, {"VLLM::Worker": 900.0, "proxy": 180.0}, {"VLLM::Worker": 30, "proxy": 50})
    warm = Sample(WARMUP, {"VLLM::Worker": 1000.0, "proxy": 180.0},
                  {"VLLM::Worker": 40, "proxy": 50})
    end = Sample(180, {"VLLM::Worker": worker_mb, "proxy": proxy_mb},
                 {"VLLM::Worker": worker_fds, "proxy": 50}, gauges=gauges or {})
    return [start, warm, end]


OK = [("rerank", "200", 1.0, 200, 0.5), ("bad", "4xx", 2.0, 400, 0.01)]


def bounds(results, series):
    return check(results, series, WARMUP, Bounds(rss_growth=0.05, front_rss_growth=0.25,
                                                 fd_growth=8))


def test_flat_series_pass_and_growth_from_the_warm_up_is_what_counts():
    assert bounds(OK, samples(1040.0)) == []     # +16 % since start, +4 % since the warm-up


def test_rss_growth_past_the_bound_fails():
    failures = bounds(OK, samples(1060.0))
    assert len(failures) == 1 and failures[0].startswith("VLLM::Worker: RSS 1000 -> 1060 MB")


def test_front_processes_have_their_own_bound():
    assert bounds(OK, samples(1000.0, proxy_mb=220.0)) == []             # +22 %
    assert bounds(OK, samples(1000.0, proxy_mb=230.0))[0].startswith("proxy: RSS 180 -> 230")


def test_capture_state_left_after_the_last_request_fails():
    left = {"qrhead_capture_active_requests": 1.0, "qrhead_capture_held_results": 0.0}
    assert bounds(OK, samples(1000.0, gauges=left)) == [
        f"capture state left after the last request: {left}"]
    assert bounds(OK, samples(1000.0, gauges=dict.fromkeys(left, 0.0))) == []


def test_fd_growth_past_the_bound_fails():
    assert bounds(OK, samples(1000.0, worker_fds=49)) == [
        "VLLM::Worker: open fds 40 -> 49 (bound +8)"]


@pytest.mark.parametrize("result, needle", [
    (("rerank", "200", 3.0, 500, 0.1), "5xx"),
    (("chat", "200", 3.0, 0, 0.1), "5xx or transport"),
    (("bad", "4xx", 3.0, 200, 0.1), "not answered 4xx")])
def test_server_errors_and_accepted_bad_requests_fail(result, needle):
    failures = bounds(OK + [result], samples(1000.0))
    assert len(failures) == 1 and needle in failures[0]


def test_no_sample_after_the_warm_up_fails():
    assert bounds(OK, samples(1000.0)[:1]) == ["no process sample after the warm-up"]


@pytest.mark.slow
def test_every_window_carries_the_same_load_with_fresh_content():
    from bench.serve.soak_mix import build_mix

    period = 20.0
    items = build_mix(0, "m", period=period)
    first = [i for i in items if i.at < period]
    second = [i for i in items if period <= i.at < 2 * period]

    def load(window, offset):
        return [(i.route, round(i.at - offset, 9), i.stream,
                 len(json.loads(i.body).get("documents", json.loads(i.body).get("passages", [])))
                 if i.expect == "200" else None) for i in window]

    assert first and load(first, 0) == load(second, period)
    assert [i.body for i in first if i.expect == "200"] != [i.body for i in second
                                                              if i.expect == "200"]


def test_three_minute_soak_holds_the_bounds(serve_app):
    # Engine processes may grow 10 %, not the bench's 5 %: CI runs on other CPUs than the one
    # measured (here, with the engines' memory bounds, the worker grew +0.6 % in 3 min;
    # docs/results/worker_memory.md). One draw of the load for the whole 3 minutes (no
    # repeat): 20 requests a window are too few to hold every route.
    args = parse_args(["--url", serve_app.url, "--duration-s", "180", "--window-s", "60",
                       "--repeat-s", "0", "--sample-s", "10", "--check",
                       "--max-rss-growth", "0.10"])
    out = run(args, serve_app.url, "smollm2-135m")
    print(markdown({"run": "tests/test_soak.py, the session app"}, out["results"],
                   out["samples"], args.window_s, args.warmup_s, out["failures"]))
    routes = {r[0] for r in out["results"]}
    assert {"rerank", "chat", "chat-stream", "answer", "bad"} <= routes
    assert {"VLLM::Worker", "EngineCore", "engine replica", "ingress replica"} <= set(
        out["samples"][-1].rss_mb), "the app's processes were not found"
    assert out["failures"] == []
