"""What a scoring request tells the worker, through ``SamplingParams.extra_args["qrhead"]``.

    {"key": "<uuid>", "span_start": 1401, "heads": [[13, 4], [14, 0], ...]}

``key`` names the result (vLLM may rewrite request ids); ``span_start`` is the first token of
the query span, which runs to the end of the prompt; ``heads`` are global (layer, query head).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

NAMESPACE = "qrhead"


@dataclass(frozen=True)
class RequestSpec:
    key: str
    span_start: int
    heads: tuple[tuple[int, int], ...]

    def to_extra_args(self) -> dict[str, Any]:
        return {NAMESPACE: {"key": self.key, "span_start": self.span_start,
                            "heads": [list(h) for h in self.heads]}}

    @classmethod
    def from_sampling_params(cls, sampling_params) -> "RequestSpec | None":
        """The spec of a scoring request, or None for an ordinary one (the only cost they pay)."""
        extra = getattr(sampling_params, "extra_args", None)
        if not extra or NAMESPACE not in extra:
            return None
        raw = extra[NAMESPACE]
        return cls(str(raw["key"]), int(raw["span_start"]),
                   tuple((int(l), int(h)) for l, h in raw["heads"]))
