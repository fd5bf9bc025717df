"""QRHead's operational metrics, on whatever Prometheus endpoint the process already exports.

Inside Ray (a Serve replica) they are Ray metrics (``ray.util.metrics``): Ray's metrics agent
exports them with Ray Serve's own metrics and vLLM's (the Serve app starts its engines with
vLLM's ``RayPrometheusStatLogger``, as Ray Serve LLM does), and the app's ``GET /metrics``
shows all three. Outside Ray they go to ``prometheus_client``'s default registry, next to an
offline vLLM engine's own metrics (expose it with ``prometheus_client.start_http_server``).

==================================  ==========  ==========================================
``qrhead_scoring_requests_total``   counter     queries scored (a real pass and its null twin)
``qrhead_documents_scored_total``   counter     documents scored
``qrhead_capture_errors_total``     counter     queries whose capture failed (CaptureError)
``qrhead_capture_seconds``          histogram   worker time spent capturing, per query
``qrhead_scoring_seconds``          histogram   engine time of a query, both passes
``qrhead_capture_active_requests``  gauge       scoring requests in the capture driver's table
``qrhead_capture_held_results``     gauge       finished captures the workers hold, not yet taken
==================================  ==========  ==========================================

Every series carries a ``model_name`` label. Ray prefixes its metrics with ``ray_``. The two
gauges are the engine workers' own counts (``qrhead_stats``, summed over tensor-parallel ranks),
read by the engine replica at each health check (``health_check_period_s``): both go back to 0
when no scoring request is in flight, so a count that stays up is a leak.
"""

from __future__ import annotations

import threading

TIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_DEFS = {
    "qrhead_scoring_requests_total": ("counter", "Queries scored (a real pass and its null twin)."),
    "qrhead_documents_scored_total": ("counter", "Documents scored."),
    "qrhead_capture_errors_total": ("counter", "Queries whose capture failed (CaptureError)."),
    "qrhead_capture_seconds": ("histogram", "Worker time spent capturing, per query."),
    "qrhead_scoring_seconds": ("histogram", "Engine time of a query, both passes."),
    "qrhead_capture_active_requests": ("gauge", "Scoring requests in the capture driver's "
                                                "table (summed over the engine's workers)."),
    "qrhead_capture_held_results": ("gauge", "Finished captures the workers hold that no "
                                             "client has taken yet."),
}
_lock = threading.Lock()
_metrics: dict[str, object] | None = None


def _in_ray() -> bool:
    try:
        import ray
    except ImportError:            # the Python API without the serve/detect extras
        return False
    return ray.is_initialized()


def _make() -> dict[str, object]:
    if _in_ray():
        from ray.util import metrics as ray_metrics
        tags = {"tag_keys": ("model_name",)}
        make = {"counter": lambda n, d: ray_metrics.Counter(n, description=d, **tags),
                "gauge": lambda n, d: ray_metrics.Gauge(n, description=d, **tags),
                "histogram": lambda n, d: ray_metrics.Histogram(
                    n, description=d, boundaries=list(TIME_BUCKETS), **tags)}
    else:
        import prometheus_client as prom
        make = {"counter": lambda n, d: prom.Counter(n, d, ["model_name"]),
                "gauge": lambda n, d: prom.Gauge(n, d, ["model_name"]),
                "histogram": lambda n, d: prom.Histogram(n, d, ["model_name"],
                                                         buckets=TIME_BUCKETS)}
    return {name: make[kind](name, doc) for name, (kind, doc) in _DEFS.items()}


def _get(name: str):
    global _metrics
    with _lock:
        if _metrics is None:
            _metrics = _make()
    return _metrics[name]


_UPDATE = {"counter": "inc", "gauge": "set", "histogram": "observe"}   # same in both APIs


def _add(name: str, model: str, value: float) -> None:
    """Count or observe ``value``; a gauge is set to it."""
    metric, update = _get(name), _UPDATE[_DEFS[name][0]]
    if hasattr(metric, "labels"):                       # prometheus_client
        getattr(metric.labels(model_name=model), update)(value)
    else:                                               # ray.util.metrics
        getattr(metric, update)(value, tags={"model_name": model})


def record_scored(model: str, num_documents: int, capture_s: float, scoring_s: float) -> None:
    """One query scored: its documents, the workers' capture time and the engine time."""
    _add("qrhead_scoring_requests_total", model, 1)
    _add("qrhead_documents_scored_total", model, num_documents)
    _add("qrhead_capture_seconds", model, capture_s)
    _add("qrhead_scoring_seconds", model, scoring_s)


def record_capture_error(model: str) -> None:
    _add("qrhead_capture_errors_total", model, 1)


def record_capture_state(model: str, stats: dict[str, int] | list[dict[str, int]]) -> None:
    """The workers' capture counts (``backend.stats_async()``: one dict per rank, or one for
    the engine) as the two gauges."""
    ranks = stats if isinstance(stats, list) else [stats]
    _add("qrhead_capture_active_requests", model, sum(r.get("active", 0) for r in ranks))
    _add("qrhead_capture_held_results", model, sum(r.get("done", 0) for r in ranks))
