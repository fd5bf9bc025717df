"""What the ingress does when an engine replica is busy, dying or gone: one policy, one place.

* **Over the bound** (the engine deployment's ``max_queued_requests`` is reached, Serve raises
  ``BackPressureError`` on the handle): 503 with ``Retry-After`` at once, never a wait without
  end.
* **No replica takes it in time** (none running: restarting, its node lost; or all at
  ``max_ongoing_requests``): every engine call is a stream whose first item says a replica has
  taken it (serve/server.py:ACCEPTED); after ``replica_wait_s`` without it, 503 with
  ``Retry-After``. The work itself is not bounded: a long generation is never cut.
* **Replica gone** (killed, crashed, its node lost: ``RayActorError`` and kin, or the engine
  inside it died) before the first item of the answer: nothing has reached the client, so the
  call is sent once more; Serve routes it to another replica, or to the restarted one, within
  the same bound. A stream that fails later, or a retry that fails too, gets a 503 with
  ``Retry-After``.
* **Never Ray internals in a body**: every Ray system error becomes that 503 with a plain
  message naming the role (retriever / generator); the details go to the log.

Client mistakes (APIError, package errors) and real bugs keep their mapping in
serve/errors.py:to_api_error. A client mistake found in an engine replica comes back as an item of
its stream (:func:`answer_stream`), not as an exception: Serve would log each with a traceback.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, AsyncIterator, Awaitable, Callable

from fastapi.responses import JSONResponse

from qrhead_vllm.serve.errors import APIError, client_error, to_api_error, unwrap

logger = logging.getLogger(__name__)

# The first item of every engine stream (serve/server.py): a replica has taken the request.
# What follows is the answer (rerank, retrieve) or the HTTP response start and body (openai).
ACCEPTED = "accepted"
RESTART_RETRY_AFTER_S = 10
BUSY_RETRY_AFTER_S = 1
# vLLM's error when the engine core inside a live replica died: the replica's health check
# restarts it, so it is the same "gone" as a dead actor (named, not imported: the ingress
# stays free of vLLM).
ENGINE_GONE_NAMES = frozenset({"EngineDeadError"})


class Unavailable(APIError):
    """A 503 with ``Retry-After``: the service cannot take this request now, but will."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(503, message, None, "service_unavailable")
        self.args = (message, retry_after_s)        # pickles as Unavailable(message, s)
        self.retry_after_s = retry_after_s

    def response(self) -> JSONResponse:
        out = super().response()
        out.headers["retry-after"] = str(self.retry_after_s)
        return out


async def answer_stream(compute: Callable[[], Awaitable[Any]]) -> AsyncIterator[Any]:
    """An engine method's stream: ACCEPTED, then ``compute()``'s answer; a client mistake it
    raises is yielded as the answer (an APIError, which :func:`open_stream` raises in the
    ingress), so it leaves the replica without Serve logging a traceback for it. Any other
    failure is raised: Serve logs it with its traceback, and the ingress maps it."""
    yield ACCEPTED
    try:
        answer = await compute()
    except Exception as e:                      # noqa: BLE001 - re-raised unless a 4xx
        answer = client_error(e)
        if answer is None:
            raise
    yield answer


def is_backpressure(exc: BaseException) -> bool:
    from ray.serve.exceptions import BackPressureError
    return isinstance(unwrap(exc), BackPressureError)


def is_replica_gone(exc: BaseException) -> bool:
    """A failure of the replica or its engine, not of the request: worth one more try."""
    from ray.exceptions import RayError, RayTaskError, TaskCancelledError
    from ray.serve.exceptions import (DeploymentUnavailableError, RayServeException,
                                      ReplicaUnavailableError)
    exc = unwrap(exc)
    if type(exc).__name__ in ENGINE_GONE_NAMES:
        return True
    if isinstance(exc, TaskCancelledError) or (
            isinstance(exc, RayServeException) and not isinstance(
                exc, (DeploymentUnavailableError, ReplicaUnavailableError))):
        return False        # a cancelled request, backpressure: not a lost replica
    return isinstance(exc, (DeploymentUnavailableError, ReplicaUnavailableError)) or (
        isinstance(exc, RayError) and not isinstance(exc, RayTaskError))


def engine_error(role: str, exc: BaseException) -> APIError:
    """The HTTP error for anything a call to the ``role`` engine raised."""
    if is_backpressure(exc):
        return Unavailable(f"the {role} is at capacity (its request queue is full); retry in "
                           f"{BUSY_RETRY_AFTER_S} s", BUSY_RETRY_AFTER_S)
    if is_replica_gone(exc):
        logger.warning("the %s engine is unavailable: %r", role, unwrap(exc))
        return Unavailable(f"the {role} is unavailable (restarting after a failure); retry in "
                           f"{RESTART_RETRY_AFTER_S} s", RESTART_RETRY_AFTER_S)
    return to_api_error(exc)


async def health_check(role: str, call, wait_s: float) -> None:
    """Await the ``role`` engine's check_health ``call`` (a Serve response) for at most
    ``wait_s``; a 503 with Retry-After unless it passed."""
    try:
        await asyncio.wait_for(call, wait_s)
    except asyncio.TimeoutError:
        call.cancel()
        raise Unavailable(f"the {role} did not answer its health check within {wait_s:.0f} s "
                          f"(restarting, or no replica); retry in {RESTART_RETRY_AFTER_S} s",
                          RESTART_RETRY_AFTER_S) from None
    except Exception as e:                      # noqa: BLE001 - every failure is "unhealthy"
        raise _unhealthy(role, e) from None


def _unhealthy(role: str, exc: BaseException) -> APIError:
    """/health's answer when the ``role`` engine's check_health failed: always a 503."""
    if is_backpressure(exc) or is_replica_gone(exc):
        return engine_error(role, exc)
    from qrhead_vllm.serve.health import EngineCannotScore
    cause = unwrap(exc)
    reason = str(cause) if isinstance(cause, EngineCannotScore) else "its health check failed"
    logger.warning("the %s is unhealthy: %r", role, cause)
    return Unavailable(f"the {role} cannot serve: {reason}", RESTART_RETRY_AFTER_S)


async def open_stream(role: str, send: Callable[[], Any],
                      replica_wait_s: float) -> tuple[Any, AsyncIterator[Any]]:
    """Start a streamed engine call, ``send()`` (a Serve ``DeploymentResponseGenerator``).

    Returns the first item after ACCEPTED (a result, or an HTTP response start) and the stream
    for the rest. Every failure leaves as an APIError (see the module docstring).
    """
    for attempt in (1, 2):
        stream = send()
        try:
            await _accepted(stream, role, replica_wait_s)
            first = await stream.__anext__()
            if isinstance(first, APIError):     # a client mistake (answer_stream)
                raise first
            return first, stream
        except Exception as e:                  # noqa: BLE001 - mapped, never swallowed
            stream.cancel()
            if isinstance(e, APIError):
                raise
            if attempt == 2 or not is_replica_gone(e):
                raise engine_error(role, e) from None
            logger.warning("the %s replica was lost before it answered (%r); sending the "
                           "request once more", role, unwrap(e))
    raise AssertionError("unreachable")


async def _accepted(stream, role: str, replica_wait_s: float) -> None:
    try:
        first = await asyncio.wait_for(stream.__anext__(), replica_wait_s)
    except asyncio.TimeoutError:
        raise Unavailable(f"no {role} replica could take the request within "
                          f"{replica_wait_s:.0f} s (restarting, or all busy); retry in "
                          f"{RESTART_RETRY_AFTER_S} s", RESTART_RETRY_AFTER_S) from None
    if first != ACCEPTED:
        raise RuntimeError(f"the {role} stream began with {first!r}, not {ACCEPTED!r}: the "
                           "ingress and the engine servers come from different versions")
