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
==================================  ==========  ==========================================

Every series carries a ``model_name`` label. Ray prefixes its metrics with ``ray_``.
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
        from ray.util.metrics import Counter, Histogram
        return {name: (Counter(name, description=doc, tag_keys=("model_name",))
                       if kind == "counter" else
                       Histogram(name, description=doc, boundaries=list(TIME_BUCKETS),
                                 tag_keys=("model_name",)))
                for name, (kind, doc) in _DEFS.items()}
    import prometheus_client as prom
    return {name: (prom.Counter(name, doc, ["model_name"]) if kind == "counter" else
                   prom.Histogram(name, doc, ["model_name"], buckets=TIME_BUCKETS))
            for name, (kind, doc) in _DEFS.items()}


def _get(name: str):
    global _metrics
    with _lock:
        if _metrics is None:
            _metrics = _make()
    return _metrics[name]


def _add(name: str, model: str, value: float) -> None:
    metric = _get(name)
    if hasattr(metric, "labels"):                       # prometheus_client
        child = metric.labels(model_name=model)
        child.observe(value) if hasattr(child, "observe") else child.inc(value)
    elif hasattr(metric, "observe"):                     # ray Histogram
        metric.observe(value, tags={"model_name": model})
    else:                                                # ray Counter
        metric.inc(value, tags={"model_name": model})


def record_scored(model: str, num_documents: int, capture_s: float, scoring_s: float) -> None:
    """One query scored: its documents, the workers' capture time and the engine time."""
    _add("qrhead_scoring_requests_total", model, 1)
    _add("qrhead_documents_scored_total", model, num_documents)
    _add("qrhead_capture_seconds", model, capture_s)
    _add("qrhead_scoring_seconds", model, scoring_s)


def record_capture_error(model: str) -> None:
    _add("qrhead_capture_errors_total", model, 1)
