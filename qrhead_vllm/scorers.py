"""The scorer registry: every scoring method, named once, and the options that pick one.

A scoring method turns what a backend returns for a prompt (``MassResult``: per-head mean
attention of the query span over every token, for the real and the null query) into one score
per document. Each entry says what the method needs: which heads (the ranker's head set, or
every head of every layer: ICR), whether the null-query calibration runs unless the caller says,
and how a document's tokens are reduced to its score (as ``"module:function"``, the maths in
:mod:`qrhead_vllm.core.scoring`, imported only when a score is computed: this module imports no
torch, so the Serve ingress and ``qrhead rerank --help`` read the names for free).

Everything that offers a choice of method derives from here: ``QRHeadRanker(method=)``,
``qrhead rerank --method``, the Serve requests' ``"qrhead": {"method": ...}`` (rerank and
answer), the quality bench's LLM rows; the ranker, the window ranker and the detection job
compute scores only through :meth:`ScorerSpec.scores` / :meth:`ScorerSpec.head_scores`.
How to add a method: docs/architecture.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Sequence

from qrhead_vllm.engines import load
from qrhead_vllm.errors import InvalidInputError

if TYPE_CHECKING:
    import torch

    from qrhead_vllm.backends import MassResult

ALL_HEADS = "all"          # the head-set name for every head of every layer


@dataclass(frozen=True)
class ScorerSpec:
    """One scoring method and what it needs."""

    name: str
    label: str                           # its name in tables (bench rows, docs)
    summary: str                         # one line for --help and the docs
    all_heads: bool = False              # every head of every layer, whatever the head set
    calibrate: bool = True               # subtract the null query's attention unless told not to
    # "module:function", [..., tokens] -> [...]: a document's tokens to its score.
    span_sum: str = "qrhead_vllm.core.scoring:masked_span_sum"

    def scores(self, mass: "MassResult", spans: Sequence[tuple[int, int]]) -> "torch.Tensor":
        """``[N]`` document scores: calibrated rows summed over the heads, then per span."""
        return self._score(mass, spans, per_head=False)

    def head_scores(self, mass: "MassResult", spans: Sequence[tuple[int, int]]
                    ) -> "torch.Tensor":
        """``[H, N]``: each head's own score of each document (per-head output, detection)."""
        return self._score(mass, spans, per_head=True)

    def _score(self, mass, spans, per_head: bool):
        from qrhead_vllm.core.scoring import score_documents
        return score_documents(mass.real, mass.null, spans, per_head, load(self.span_sum))

    def pick_heads(self, asked: Any, default: Any = None) -> Any:
        """The ``heads=`` a ranker of this method resolves: ``"all"`` for an all-heads method
        (which refuses a named head set), else ``asked`` or, when None, ``default``."""
        if not self.all_heads:
            return default if asked is None else asked
        if asked not in (None, ALL_HEADS):
            raise InvalidInputError(f"method {self.name!r} scores with every head; leave heads "
                                    f"unset (or {ALL_HEADS!r}) instead of {asked!r}")
        return ALL_HEADS


SCORERS: dict[str, ScorerSpec] = {s.name: s for s in (
    ScorerSpec("qrhead", "QRHead", "the head set's calibrated attention, outlier-masked per "
               "document (docs/method.md 2.2)"),
    ScorerSpec("icr", "all heads (ICR)", "the same over every head of every layer (ICR, "
               "arXiv 2410.02642)", all_heads=True),
)}

SCORER_NAMES: tuple[str, ...] = tuple(SCORERS)
DEFAULT_METHOD = "qrhead"
ScorerName = Literal[SCORER_NAMES]       # type: ignore[valid-type]  (pydantic request fields)


def scorer(name: str) -> ScorerSpec:
    """The registry entry of ``name``; an unknown name is an error listing the choices."""
    try:
        return SCORERS[name]
    except KeyError:
        raise InvalidInputError(f"unknown scoring method {name!r}; choose one of "
                                f"{tuple(SCORERS)}") from None


@dataclass(frozen=True)
class ScoringOptions:
    """How to score, built once from what the caller gave (``QRHeadRanker``'s arguments,
    ``qrhead rerank``'s flags, a Serve request's ``qrhead`` object with the server's defaults)
    and carried unchanged to the ranker and its scorer.

    Args:
        method: a :data:`SCORERS` name.
        heads: what ``QRHeadRanker(heads=)`` takes (None: the model's shipped set); an
            all-heads method takes None or ``"all"``.
        calibrate: subtract the null query's attention; None: the method's default.
    """

    method: str = DEFAULT_METHOD
    heads: Any = None
    calibrate: bool | None = None

    def __post_init__(self):
        self.spec.pick_heads(self.heads)          # unknown method, heads it cannot take: raise

    @property
    def spec(self) -> ScorerSpec:
        return scorer(self.method)

    @property
    def head_spec(self) -> Any:
        """The ``heads=`` to resolve against the model (``"all"`` for an all-heads method)."""
        return self.spec.pick_heads(self.heads)

    @property
    def calibrated(self) -> bool:
        return self.spec.calibrate if self.calibrate is None else self.calibrate
