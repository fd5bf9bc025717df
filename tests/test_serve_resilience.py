"""The ingress's fault policy (serve/resilience.py) on Ray's real exception classes: a full queue
or a lost replica is a 503 with Retry-After and a plain message, a call whose replica was lost
before it answered is sent once more, a call no replica takes in time is a 503, and a down
generator leaves /v1/rerank working.

The replica kill on the real app is in test_serve_faults.py.
"""

from __future__ import annotations

import asyncio
import pickle

import httpx
import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError
from ray.serve.exceptions import BackPressureError
from vllm.v1.engine.exceptions import EngineDeadError

from qrhead_vllm.errors import ContextOverflowError
from qrhead_vllm.serve.args import QRHeadServeConfig
from qrhead_vllm.serve.health import EngineCannotScore, ScoringProbe
from qrhead_vllm.serve.ingress import Upstream, build_ingress_app
from qrhead_vllm.serve.resilience import (BUSY_RETRY_AFTER_S, Unavailable, engine_error,
                                          is_replica_gone, open_stream)
from qrhead_vllm.serve.resilience import ACCEPTED

WAIT_S = QRHeadServeConfig().http.replica_wait_s

RAY_NAMES = ("Ray", "Actor", "BackPressure", "EngineDead")


def gone_errors():
    return [ActorDiedError(), ActorUnavailableError("connection lost", None),
            EngineDeadError(), RayTaskError("rerank", "tb", ActorDiedError()).as_instanceof_cause()]


def assert_plain_503(err, role: str):
    assert isinstance(err, Unavailable) and err.status == 503 and role in err.message
    assert not any(name in err.message for name in RAY_NAMES), err.message
    response = err.response()
    assert response.status_code == 503 and int(response.headers["retry-after"]) > 0


@pytest.mark.parametrize("exc", gone_errors(), ids=lambda e: type(e).__name__)
def test_lost_replica_is_a_plain_503(exc):
    assert is_replica_gone(exc)
    assert_plain_503(engine_error("retriever", exc), "retriever")


def test_full_queue_is_503_at_once_and_client_errors_keep_their_status():
    busy = engine_error("retriever", BackPressureError(65, 64))
    assert_plain_503(busy, "retriever")
    assert busy.retry_after_s == BUSY_RETRY_AFTER_S and "capacity" in busy.message
    assert not is_replica_gone(BackPressureError(65, 64))
    overflow = RayTaskError("rerank", "tb", ContextOverflowError("too long"))
    assert engine_error("retriever", overflow.as_instanceof_cause()).status == 400


def test_unavailable_crosses_a_handle_intact():
    err = pickle.loads(pickle.dumps(Unavailable("the generator is unavailable", 7)))
    assert (err.status, err.retry_after_s, err.message) == (503, 7, "the generator is unavailable")


class Stream:
    """A Serve response stream: ACCEPTED (unless it never gets a replica), then ``items``; an
    item that is an exception is raised there."""

    def __init__(self, *items, accepted=True):
        self.items = ([ACCEPTED] if accepted else []) + list(items)
        self.cancelled = False

    def __aiter__(self):
        return self

    async def __anext__(self):
        if not self.items:
            if self.cancelled:
                raise StopAsyncIteration
            await asyncio.sleep(60)             # waiting for a replica that never comes
        item = self.items.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    def cancel(self):
        self.cancelled = True


class Sender:
    """send() for open_stream: one prepared stream per call."""

    def __init__(self, *streams):
        self.streams, self.calls = list(streams), 0

    def __call__(self):
        self.calls += 1
        return self.streams.pop(0)


def test_a_call_whose_replica_was_lost_before_it_answered_is_sent_once_more():
    send = Sender(Stream(ActorDiedError()), Stream("scores"))
    assert asyncio.run(open_stream("retriever", send, WAIT_S))[0] == "scores"
    assert send.calls == 2


def test_a_long_answer_is_not_cut_by_the_wait_for_a_replica():
    class Slow(Stream):
        async def __anext__(self):
            if self.items == ["start"]:
                await asyncio.sleep(0.3)        # the work: longer than the wait bound
            return await super().__anext__()

    start, _ = asyncio.run(open_stream("generator", Sender(Slow("start")), replica_wait_s=0.1))
    assert start == "start"


@pytest.mark.parametrize("streams,calls", [
    ([Stream(ActorDiedError()), Stream(ActorDiedError())], 2),     # the retry fails too
    ([Stream(ActorDiedError()), Stream(accepted=False)], 2),       # no replica within the bound
    ([Stream(accepted=False)], 1),                                 # none from the start
], ids=["retry-fails", "retry-waits-too-long", "no-replica"])
def test_unrecovered_call_is_a_plain_503(streams, calls):
    send = Sender(*streams)
    with pytest.raises(Unavailable) as err:
        asyncio.run(open_stream("generator", send, replica_wait_s=0.2))
    assert_plain_503(err.value, "generator")
    assert send.calls == calls and all(s.cancelled for s in streams)


def test_a_stream_that_already_answered_is_not_sent_again():
    async def read():
        start, rest = await open_stream("generator", send, WAIT_S)
        assert start == "start"
        with pytest.raises(ActorDiedError):     # the client has bytes: the failure is its own
            await rest.__anext__()
    send = Sender(Stream("start", ActorDiedError()))
    asyncio.run(read())
    assert send.calls == 1


class Handle:
    """A deployment handle whose every call answers ``result`` or raises ``error``: awaited
    (``handle.check_health.remote()``) or streamed (``handle.options(stream=True).rerank...``,
    ACCEPTED first, as the engine servers do)."""

    def __init__(self, result=None, error=None, streaming=False, hang=False):
        self.result, self.error, self.streaming, self.hang = result, error, streaming, hang
        self.cancelled = False

    def options(self, stream=False, **_):
        return Handle(self.result, self.error, stream, self.hang)

    def __getattr__(self, method):
        return self

    def remote(self, *args, **kwargs):
        return Stream(self.error or self.result) if self.streaming else self

    def __await__(self):
        if self.hang:                           # no replica to answer
            yield from asyncio.sleep(60).__await__()
        if self.error is not None:
            raise self.error
        return self.result

    def cancel(self):
        self.cancelled = True


def test_generator_down_retriever_up():
    asyncio.run(_generator_down_retriever_up())


async def _generator_down_retriever_up():
    retrieved = {"id": "r", "model": "m", "results": [], "usage": {},
                 "passages": [{"rank": 1, "text": "P", "index": 0}], "retrieval": {}}
    upstream = Upstream(Handle(error=ActorDiedError()), Handle(result=retrieved), WAIT_S)
    app = build_ingress_app(upstream, QRHeadServeConfig())
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
    r = await client.post("/v1/rerank", json={"query": "q", "documents": ["d"]})
    assert r.status_code == 200, r.text
    for path, body in (("/v1/answer", {"question": "q", "context": "a\n\nb"}),
                       ("/v1/chat/completions", {"model": "m", "messages": []})):
        r = await client.post(path, json=body)
        assert r.status_code == 503 and "generator is unavailable" in r.json()["message"]
        assert r.headers["retry-after"] and not any(n in r.text for n in RAY_NAMES)


def test_health_is_503_when_the_retriever_cannot_score():
    async def check():
        for error in (EngineCannotScore("the scoring probe failed: capture broke"),
                      ActorDiedError()):
            cause = RayTaskError("check_health", "tb", error).as_instanceof_cause()
            app = build_ingress_app(Upstream(Handle(), Handle(error=cause), WAIT_S), QRHeadServeConfig())
            client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
            r = await client.get("/health")
            assert r.status_code == 503 and r.headers["retry-after"], r.text
            assert "retriever" in r.json()["message"] and "EngineCannotScore" not in r.text
        app = build_ingress_app(Upstream(Handle(), Handle(), WAIT_S), QRHeadServeConfig())
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
        assert (await client.get("/health")).status_code == 200
    asyncio.run(check())


def test_health_is_503_when_no_replica_answers_in_time():
    async def check():
        retriever = Handle(hang=True)
        app = build_ingress_app(Upstream(Handle(), retriever, 0.2), QRHeadServeConfig())
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
        r = await client.get("/health")
        assert r.status_code == 503 and r.headers["retry-after"], r.text
        assert "did not answer its health check within" in r.json()["message"], r.text
        assert retriever.cancelled
    asyncio.run(check())


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_scoring_probe_runs_only_when_no_request_scored_lately():
    clock, calls = Clock(), []

    async def score(req):
        calls.append(req)
        return {"results": [{"index": 0}, {"index": 1}]}

    probe = ScoringProbe(interval_s=30, clock=clock)
    asyncio.run(probe.check(score))
    asyncio.run(probe.check(score))                 # just proven: no second probe
    clock.now = 28
    probe.started()
    clock.now = 29
    probe.finished(ok=True)                         # a real request scored
    clock.now = 58
    asyncio.run(probe.check(score))
    assert len(calls) == 1 and len(calls[0].documents) == 2
    clock.now = 60
    asyncio.run(probe.check(score))
    assert len(calls) == 2


@pytest.mark.parametrize("answer,words", [
    (ActorDiedError(), "probe failed"), ("hang", "longer than"), ({"results": []}, "not two")])
def test_scoring_probe_fails_when_the_engine_cannot_score(answer, words):
    async def score(req):
        if answer == "hang":
            await asyncio.sleep(60)
        if isinstance(answer, Exception):
            raise answer
        return answer

    with pytest.raises(EngineCannotScore, match=words):
        asyncio.run(ScoringProbe(timeout_s=0.2).check(score))


def test_scoring_probe_waits_on_a_busy_engine_until_it_looks_stuck():
    """Requests in flight: no probe (it would queue behind them); only none finishing for
    stuck_after_s fails the check."""
    clock, calls = Clock(), []

    async def score(req):
        calls.append(req)
        return {"results": [{"index": 0}, {"index": 1}]}

    probe = ScoringProbe(interval_s=30, stuck_after_s=300, clock=clock)
    probe.started()
    clock.now = 299
    asyncio.run(probe.check(score))
    assert calls == []
    clock.now = 301
    with pytest.raises(EngineCannotScore, match="none finished"):
        asyncio.run(probe.check(score))
    probe.finished(ok=False)                        # the engine is idle again: probe it
    asyncio.run(probe.check(score))
    assert len(calls) == 1
