"""A request's scoring choices: the fields of its ``"qrhead"`` object, and the one
:class:`~qrhead_vllm.scorers.ScoringOptions` the ingress builds from them and the server's
defaults, then sends with the request to the retriever (serve/retriever.py), which ranks with it
unchanged. The method names come from :mod:`qrhead_vllm.scorers`.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from qrhead_vllm.head_registry import shipped_head_configs
from qrhead_vllm.errors import InvalidInputError
from qrhead_vllm.scorers import (DEFAULT_METHOD, SCORER_NAMES, ScorerName, ScoringOptions,
                                 scorer)
from qrhead_vllm.serve.args import RetrieverConfig
from qrhead_vllm.serve.errors import APIError

# Head-set names a request may ask for besides the shipped config names. Requests can never name
# a file path: that would let a client make the server read arbitrary files.
SPECIAL_HEADS = ("default", "all")


class ScoringFields(BaseModel):
    """The scoring choices of a rerank or answer request; None: the server's setting."""

    model_config = ConfigDict(extra="forbid")

    method: ScorerName | None = Field(None, description="Scoring method, one of "
                                      f"{list(SCORER_NAMES)}; default: {DEFAULT_METHOD!r}.")
    heads: str | None = Field(None, description="Head set: 'default', 'all' or a shipped config "
                                                "name; default: the server's head set.")
    calibrate: bool | None = Field(None, description="Subtract the null-query attention; "
                                                     "default: the server's setting.")


def request_options(fields: ScoringFields | None, cfg: RetrieverConfig) -> ScoringOptions:
    """The ScoringOptions of one request: its choices, the server's for what it leaves out.
    An unknown head-set name, or a head set with a method that uses every head, is a 400."""
    fields = fields or ScoringFields()
    name = fields.heads or "default"
    if name not in SPECIAL_HEADS and name not in shipped_head_configs():
        raise APIError(400, f"qrhead.heads: unknown head set {name!r}; use 'default', 'all' or "
                            f"one of {sorted(shipped_head_configs())}", "qrhead.heads")
    spec = scorer(fields.method or DEFAULT_METHOD)
    calibrate = cfg.calibrate if fields.calibrate is None else fields.calibrate
    try:
        heads = spec.pick_heads(None if name == "default" else name, _hashable(cfg.head_spec))
    except InvalidInputError as e:      # a head set named with a method that uses every head
        raise APIError(400, f"qrhead.heads: {e}", "qrhead.heads") from None
    return ScoringOptions(spec.name, heads, calibrate)


def _hashable(heads):
    """The config's head set as a cache key (an explicit list becomes a tuple of pairs)."""
    return tuple(tuple(p) for p in heads) if isinstance(heads, list) else heads
