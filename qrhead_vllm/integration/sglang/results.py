"""A scoring request's result as SGLang returns it: in ``meta_info["qrhead"]``, SGLang's
per-output-token customized info, a list whose entry for the prompt's step is our payload
(:mod:`qrhead_vllm.integration.request_spec`), ``None`` elsewhere."""

from __future__ import annotations

from typing import Any

import torch

from qrhead_vllm.integration.request_spec import NAMESPACE, merge_results


def _payload(meta_info: dict[str, Any]) -> dict[str, Any] | None:
    return next((p for p in meta_info.get(NAMESPACE) or () if p), None)


def capture_seconds(meta_info: dict[str, Any]) -> float:
    """The scheduler's time spent capturing this request (0 when it reported none)."""
    payload = _payload(meta_info)
    return float(payload.get("capture_s", 0.0)) if payload else 0.0


def decode_result(meta_info: dict[str, Any], num_heads: int) -> torch.Tensor:
    """The ``[num_heads, T]`` rows of one finished scoring request, from its ``meta_info``.

    Raises:
        CaptureError: the engine reported a capture error, or returned no result at all (the
            plugin is not enabled in the engine, or the request was not a scoring request).
    """
    return merge_results([_payload(meta_info)], num_heads,
                         "the SGLang engine returned no QRHead result for a scoring request; is "
                         "it running with QRHEAD_ENABLED=1 and qrhead-vllm installed (entry "
                         "point sglang.srt.plugins)?")
