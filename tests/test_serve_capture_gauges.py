"""The workers' capture counts in the real app's /metrics (issue 27): the two gauges appear, and
read 0 once every request has ended, including one whose client went away mid-request (its
result comes after the client gave up: tests/test_capture_cleanup.py covers that path alone)."""

from __future__ import annotations

import time

import httpx
import pytest

from qrhead_vllm.metrics import _DEFS

pytestmark = pytest.mark.slow
GAUGES = [f"ray_{name}" for name, (kind, _) in _DEFS.items() if kind == "gauge"]


def gauge_values(text: str) -> dict[str, float]:
    """Each capture gauge summed over its series (absent: not exported yet)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        name = line.split("{", 1)[0]
        if name in GAUGES:
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def test_serve_capture_gauges_appear_and_go_back_to_zero(serve_app):
    assert len(GAUGES) == 2
    case = serve_app.cases[1]
    body = {"query": case["query"], "documents": case["documents"] * 4,   # ~5K tokens:
            "qrhead": {"windowed": True}}                                 # two windows
    try:                                             # the client leaves mid-prefill
        r = httpx.post(f"{serve_app.url}/v1/rerank", json=body, timeout=0.5)
        pytest.fail(f"a rerank of {len(body['documents'])} documents answered within 0.5 s, "
                    f"so nothing was cancelled: {r.status_code} {r.text[:300]}")
    except httpx.TimeoutException:
        pass
    r = httpx.post(f"{serve_app.url}/v1/rerank", json=body, timeout=300)
    assert r.status_code == 200, r.text
    # The engine replica reads the workers' counts at each health check (every 10 s) and
    # Ray's agent exports them every few seconds.
    deadline, values = time.monotonic() + 120, {}
    while time.monotonic() < deadline:
        values = gauge_values(httpx.get(f"{serve_app.url}/metrics", timeout=60).text)
        if len(values) == 2 and not any(values.values()):
            break
        time.sleep(3)
    assert set(values) == set(GAUGES), f"capture gauges missing from /metrics: {values}"
    assert values == {name: 0.0 for name in GAUGES}, f"capture state left behind: {values}"
