"""What a scoring request tells the engine, and what comes back: one wire format, every engine.

Spec, one JSON string under the ``"qrhead"`` key of the engine's per-request free-form params
(vLLM: ``SamplingParams.extra_args``; SGLang: ``SamplingParams.custom_params``, whose msgpack
IPC only carries scalars, flat lists and flat dicts)::

    {"span_start": 1401, "heads": [[13, 4], [14, 0], ...], "key": "<uuid>",
     "doc_spans": [12, 140, 143, 301, ...]}

``span_start`` is the first token of the query span, which runs to the end of the prompt;
``heads`` are global (layer, query head); ``key`` names a result the client pulls later (vLLM,
which may rewrite request ids); it is absent where the result travels with the request's own
output (SGLang). ``doc_spans`` (optional; vLLM only) turns on decode-time capture: the
documents' half-open token ranges ``[a0, b0), [a1, b1), ...`` flattened to ``a0, b0, a1, b1,
...``; the per-token span mass of a generating request is kept under ``decode_key(key)``.

Result, one JSON-safe payload per request (and per tensor-parallel rank)::

    {"index": [...], "shape": [h, T], "rows": "<base64 fp32>", "error": null, "capture_s": 0.01}

(a decode-time result: ``"shape": [h, G, N]``, see ``core.capture.DecodeCapture``).

Rows are the raw fp32 bytes in base64 (exact), so the payload survives msgpack, pickle and
HTTP JSON alike.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import torch

from qrhead_vllm.core.driver import Tracked
from qrhead_vllm.errors import CaptureError

NAMESPACE = "qrhead"   # the key of our spec in the engine's params (and of our results)
DECODE_SUFFIX = "/decode"


def decode_key(key: str) -> str:
    """The key a request's decode-time result is kept under, beside its prefill result's."""
    return key + DECODE_SUFFIX


class MalformedSpec(ValueError):
    """A ``qrhead`` entry that is not a spec; it becomes that request's error."""


@dataclass(frozen=True)
class RequestSpec:
    span_start: int
    heads: tuple[tuple[int, int], ...]
    key: str | None = None
    doc_spans: tuple[tuple[int, int], ...] = ()   # decode-time capture over these; () = off

    def as_params(self) -> dict[str, str]:
        """The entry to put in the engine's per-request params (``extra_args``...)."""
        raw: dict[str, Any] = {"span_start": self.span_start,
                               "heads": [list(h) for h in self.heads]}
        if self.key is not None:
            raw["key"] = self.key
        if self.doc_spans:
            raw["doc_spans"] = [int(x) for span in self.doc_spans for x in span]
        return {NAMESPACE: json.dumps(raw)}

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None) -> "RequestSpec | None":
        """The spec of a scoring request, or None for an ordinary one (the only cost they pay).

        Raises:
            MalformedSpec: the entry is there but is not a spec.
        """
        if not params or NAMESPACE not in params:
            return None
        try:
            raw = json.loads(params[NAMESPACE])
            key = raw.get("key")
            return cls(int(raw["span_start"]), tuple((int(l), int(h)) for l, h in raw["heads"]),
                       None if key is None else str(key), _pairs(raw.get("doc_spans", ())))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise MalformedSpec(f"malformed qrhead spec: {type(e).__name__}: {e}") from None


def _pairs(flat) -> tuple[tuple[int, int], ...]:
    """``[a0, b0, a1, b1, ...]`` -> ``((a0, b0), (a1, b1), ...)``."""
    flat = [int(x) for x in flat]
    if len(flat) % 2:
        raise ValueError(f"doc_spans has {len(flat)} numbers, not start/end pairs")
    return tuple(zip(flat[::2], flat[1::2]))


def read_spec(params: Mapping[str, Any] | None) -> tuple[RequestSpec | None, str | None]:
    """``(spec, None)`` of a scoring request, ``(None, error)`` of a malformed one, ``(None,
    None)`` of an ordinary one: what an adapter admits into the capture driver."""
    try:
        return RequestSpec.from_params(params), None
    except MalformedSpec as e:
        return None, str(e)


def prefix_hit_cap(params: Mapping[str, Any] | None) -> int | None:
    """The longest prefix-cache hit a request may take: its span start (the span's queries are
    never cached, so a hit inside it would lose rows); 0 for a malformed spec (the capture
    reports it); None for an ordinary request."""
    try:
        spec = RequestSpec.from_params(params)
    except MalformedSpec:
        return 0
    return None if spec is None else max(0, spec.span_start)


def encode_result(tracked: Tracked, decode: bool = False) -> dict[str, Any]:
    """A request's prefill payload, or with ``decode`` its decode-time one (copies its rows to
    the host once)."""
    result = tracked.decode_result() if decode else tracked.result()
    rows = result.rows.detach().to("cpu", torch.float32).contiguous()
    return {"index": list(result.index), "shape": list(rows.shape),
            "rows": base64.b64encode(rows.numpy().tobytes()).decode("ascii"),
            "error": result.error, "capture_s": tracked.seconds}


def result_rows(payload: Mapping[str, Any]) -> torch.Tensor:
    """The ``[len(index), ...]`` fp32 rows of a payload (in its ``index`` order)."""
    data, shape = base64.b64decode(payload["rows"]), payload["shape"]
    if not data:  # torch.frombuffer refuses empty buffers
        return torch.zeros(shape)
    return torch.frombuffer(bytearray(data), dtype=torch.float32).reshape(shape)


def merge_results(payloads: Iterable[Mapping[str, Any] | None], num_heads: int,
                  missing: str) -> torch.Tensor:
    """The ``[num_heads, ...]`` rows of one request from its payloads (one per tensor-parallel
    rank that captured it; None where a rank or an output carried none), each rank's heads put
    back in the request's order.

    Raises:
        CaptureError: a payload reports a capture error, or the payloads do not cover every
            head exactly once (``missing`` says what to check).
    """
    out, index = None, []
    for payload in payloads:
        if payload is None:
            continue
        if payload["error"]:
            raise CaptureError(f"QRHead capture failed: {payload['error']}")
        rows = result_rows(payload)
        if out is None:
            out = torch.zeros(num_heads, *rows.shape[1:])
        out[payload["index"]] = rows
        index += payload["index"]
    if out is None or sorted(index) != list(range(num_heads)):
        raise CaptureError(f"{missing} ({len(index)}/{num_heads} heads returned)")
    return out
