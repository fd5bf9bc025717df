"""What a scoring request tells SGLang's scheduler, and what comes back.

Spec, in ``SamplingParams.custom_params["qrhead"]`` as one JSON string (SGLang's custom_params
only carry scalars, flat lists and flat dicts across its msgpack IPC)::

    {"span_start": 1401, "heads": [[13, 4], [14, 0], ...]}

``span_start`` is the first token of the query span, which runs to the end of the prompt;
``heads`` are global (layer, query head). No key is needed: the result travels with the
request's own output.

Result, in ``meta_info["qrhead"]`` (SGLang's per-output-token customized info: a list whose
entry for the prompt's step is our payload, ``None`` elsewhere)::

    {"index": [...], "shape": [h, T], "rows": "<base64 fp32>", "error": null, "capture_s": 0.01}

Rows are base64 so the same payload survives msgpack, pickle and HTTP JSON (``/generate``).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import torch

from qrhead_vllm.core import CaptureResult
from qrhead_vllm.errors import CaptureError
from qrhead_vllm.integration.sglang import RESULT_KEY, SPEC_KEY


@dataclass(frozen=True)
class RequestSpec:
    span_start: int
    heads: tuple[tuple[int, int], ...]

    def to_custom_params(self) -> dict[str, str]:
        return {SPEC_KEY: json.dumps({"span_start": self.span_start,
                                      "heads": [list(h) for h in self.heads]})}

    @classmethod
    def from_sampling_params(cls, sampling_params) -> "RequestSpec | None":
        """The spec of a scoring request, or None for an ordinary one (the only cost they pay).

        Raises:
            ValueError: a malformed spec (the caller turns it into the request's error).
        """
        custom = getattr(sampling_params, "custom_params", None)
        if not custom or SPEC_KEY not in custom:
            return None
        raw = json.loads(custom[SPEC_KEY])
        return cls(int(raw["span_start"]), tuple((int(l), int(h)) for l, h in raw["heads"]))


def encode_result(result: CaptureResult, seconds: float) -> dict[str, Any]:
    """A finished capture as a JSON-safe payload (exact: raw fp32 bytes, base64)."""
    rows = result.rows.detach().to("cpu", torch.float32).contiguous()
    return {"index": list(result.index), "shape": list(rows.shape),
            "rows": base64.b64encode(rows.numpy().tobytes()).decode("ascii"),
            "error": result.error, "capture_s": seconds}


def capture_seconds(meta_info: dict[str, Any]) -> float:
    """The scheduler's time spent capturing this request (0 when it reported none)."""
    payload = next((p for p in meta_info.get(RESULT_KEY) or () if p), None)
    return float(payload.get("capture_s", 0.0)) if payload else 0.0


def decode_result(meta_info: dict[str, Any], num_heads: int) -> torch.Tensor:
    """The ``[num_heads, T]`` rows of one finished scoring request, from its ``meta_info``.

    Raises:
        CaptureError: the engine reported a capture error, or returned no result at all (the
            plugin is not enabled in the engine, or the request was not a scoring request).
    """
    payload = next((p for p in meta_info.get(RESULT_KEY) or () if p), None)
    if payload is None:
        raise CaptureError(
            "the SGLang engine returned no QRHead result for a scoring request; is it running "
            "with QRHEAD_ENABLED=1 and qrhead-vllm installed (entry point sglang.srt.plugins)?")
    if payload["error"]:
        raise CaptureError(f"QRHead capture failed: {payload['error']}")
    data = base64.b64decode(payload["rows"])
    shape = payload["shape"]
    rows = (torch.frombuffer(bytearray(data), dtype=torch.float32).reshape(shape) if data
            else torch.zeros(shape))
    if sorted(payload["index"]) != list(range(num_heads)):
        raise CaptureError(f"QRHead capture returned heads {payload['index']}, expected "
                           f"{num_heads} (a tensor-parallel rank's share went missing?)")
    out = torch.zeros_like(rows)
    out[payload["index"]] = rows
    return out
