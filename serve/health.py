"""Health that means something: a retriever is healthy when it can score, proven by a score.

An engine whose core is alive can still be unable to score (a stuck scheduler, a broken
capture hook, a worker wedged in a kernel); ``AsyncLLM.check_health`` only says the core
process lives. :class:`ScoringProbe` therefore scores a tiny real request, but only when no
real request has scored within ``interval_s``: under load the traffic itself is the proof and
the probe costs nothing; when idle it costs one two-document prompt per interval. While real
requests are in flight it sends no probe (it would queue behind them and time out on a busy
but healthy engine, and Serve would restart it): the engine fails only when none of them has
finished for ``stuck_after_s``.

Serve calls the engine deployment's ``check_health`` every ``health_check_period_s``; a
failure (or a probe slower than ``health_check_timeout_s``) makes it restart the replica. The
ingress's ``/health`` asks the same question of the retriever, so a load balancer sees it too.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

from qrhead_vllm.serve.rerank import RerankRequest

PROBE_INTERVAL_S = 30.0
PROBE_TIMEOUT_S = 20.0
STUCK_AFTER_S = 300.0      # a long windowed rerank on a 2-core box takes minutes
PROBE_REQUEST = RerankRequest(query="health check",
                              documents=[{"text": "The engine can score."}, {"text": "ok"}])


class EngineCannotScore(RuntimeError):
    """The retriever failed its scoring probe (the message says how)."""


class ScoringProbe:
    """Rate-limited proof that an engine scores (see module docstring)."""

    def __init__(self, interval_s: float = PROBE_INTERVAL_S,
                 timeout_s: float = PROBE_TIMEOUT_S, stuck_after_s: float = STUCK_AFTER_S,
                 clock=time.monotonic):
        self.interval_s, self.timeout_s, self.clock = interval_s, timeout_s, clock
        self.stuck_after_s = stuck_after_s
        self.last_scored: float | None = None
        self.in_flight, self.busy_since = 0, None

    def started(self) -> None:
        """A real scoring request entered the engine."""
        if self.in_flight == 0:
            self.busy_since = self.clock()
        self.in_flight += 1

    def finished(self, ok: bool) -> None:
        """It left (``ok``: it scored, which proves the engine until ``interval_s`` from now)."""
        self.in_flight -= 1
        if ok:
            self.last_scored = self.clock()

    def due(self) -> bool:
        return self.last_scored is None or self.clock() - self.last_scored >= self.interval_s

    async def check(self, score: Callable[[RerankRequest], Awaitable[Any]]) -> None:
        """Score :data:`PROBE_REQUEST` if due; raise :class:`EngineCannotScore` if it fails."""
        if not self.due():
            return
        if self.in_flight:
            progress = max(self.last_scored or 0.0, self.busy_since)
            if self.clock() - progress < self.stuck_after_s:
                return
            raise EngineCannotScore(f"{self.in_flight} requests in flight and none finished "
                                    f"in {self.stuck_after_s:.0f} s")
        try:
            out = await asyncio.wait_for(score(PROBE_REQUEST), self.timeout_s)
        except asyncio.TimeoutError:
            raise EngineCannotScore(f"a two-document scoring probe took longer than "
                                    f"{self.timeout_s:.0f} s") from None
        except Exception as e:                  # noqa: BLE001 - the reason is the message
            raise EngineCannotScore(f"the scoring probe failed: {e}") from None
        if not isinstance(out, dict) or len(out.get("results", ())) != 2:
            raise EngineCannotScore(f"the scoring probe answered {out!r}, not two scores")
        self.last_scored = self.clock()
