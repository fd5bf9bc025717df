"""What the ingress does when an engine replica is busy, dying or gone: one policy, one place.

* **Over the bound** (the engine deployment's ``max_queued_requests`` is reached, Serve raises
  ``BackPressureError`` on the handle): 503 with ``Retry-After`` at once, never a wait without
  end.
* **Replica gone** (killed, crashed, its node lost: ``RayActorError`` and kin, or the engine
  inside it died): an idempotent call (a rerank, the retrieval of an answer) is sent once more;
  Serve routes it to another replica, or to the restarted one, and we wait at most
  ``retry_timeout_s`` for it. A call that cannot be repeated (a generation already streaming)
  or a retry that fails too gets a 503 with ``Retry-After``.
* **Never Ray internals in a body**: every Ray system error becomes that 503 with a plain
  message naming the role (retriever / generator); the details go to the log.

Client mistakes (APIError, package errors) and real bugs keep their mapping in
serve/errors.py:to_api_error.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

from fastapi.responses import JSONResponse

from qrhead_vllm.serve.errors import APIError, to_api_error, unwrap

logger = logging.getLogger(__name__)

RETRY_TIMEOUT_S = 90.0      # a CPU engine replica restarts in ~40 s on the 2-core box
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


def unhealthy(role: str, exc: BaseException) -> APIError:
    """/health's answer when the ``role`` engine's check_health failed: always a 503."""
    if is_backpressure(exc) or is_replica_gone(exc):
        return engine_error(role, exc)
    from qrhead_vllm.serve.health import EngineCannotScore
    cause = unwrap(exc)
    reason = str(cause) if isinstance(cause, EngineCannotScore) else "its health check failed"
    logger.warning("the %s is unhealthy: %r", role, cause)
    return Unavailable(f"the {role} cannot serve: {reason}", RESTART_RETRY_AFTER_S)


async def call_engine(role: str, send: Callable[[], Awaitable[Any]], idempotent: bool,
                      retry_timeout_s: float = RETRY_TIMEOUT_S) -> Any:
    """``await send()``; on a lost replica, once more (idempotent calls only) within
    ``retry_timeout_s``; every failure leaves as an APIError (see module docstring)."""
    try:
        return await send()
    except Exception as e:                      # noqa: BLE001 - mapped, never swallowed
        if not (idempotent and is_replica_gone(e)):
            raise engine_error(role, e) from None
        logger.warning("the %s replica was lost during a request (%r); retrying once",
                       role, unwrap(e))
    try:
        return await asyncio.wait_for(send(), retry_timeout_s)
    except asyncio.TimeoutError:
        raise Unavailable(f"the {role} did not recover within {retry_timeout_s:.0f} s; retry "
                          f"in {RESTART_RETRY_AFTER_S} s", RESTART_RETRY_AFTER_S) from None
    except Exception as e:                      # noqa: BLE001
        raise engine_error(role, e) from None
