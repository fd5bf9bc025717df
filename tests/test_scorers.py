"""The scorer registry (qrhead_vllm/scorers.py): the shipped methods, the options that pick one,
and the seam itself: a method registered in this file alone ranks through QRHeadRanker."""

from __future__ import annotations

import pytest
import torch

from qrhead_vllm.backends import MassResult
from qrhead_vllm.core import score_documents
from qrhead_vllm.errors import InvalidInputError
from qrhead_vllm.ranker import QRHeadRanker
from qrhead_vllm.scorers import SCORERS, ScorerSpec, ScoringOptions, scorer

DOCS = ["Paris is the capital of France.", "Pasta is made from wheat flour and water.",
        "The Eiffel Tower stands on the Champ de Mars in Paris."]
QUERY = "Where does the Eiffel Tower stand?"


def plain_span_sum(x: torch.Tensor) -> torch.Tensor:
    """The new method's maths: every token of a document counts (no outlier mask)."""
    return x.sum(dim=-1)


NO_MASK = ScorerSpec("qrhead-nomask", "QRHead, no outlier mask", "the head set's calibrated "
                     "attention summed over every token of a document",
                     span_sum="tests.test_scorers:plain_span_sum")


def test_shipped_methods_score_with_the_core_maths():
    gen = torch.Generator().manual_seed(0)
    mass = MassResult(torch.rand(4, 20, generator=gen), torch.rand(4, 12, generator=gen))
    spans = [(2, 6), (6, 11), (11, 12)]
    for name in ("qrhead", "icr"):             # same reduction; they differ in the heads read
        spec = scorer(name)
        assert torch.equal(spec.scores(mass, spans), score_documents(mass.real, mass.null, spans))
        assert torch.equal(spec.head_scores(mass, spans),
                           score_documents(mass.real, mass.null, spans, per_head=True))


def test_options_resolve_heads_and_calibration_from_the_method():
    assert ScoringOptions().head_spec is None and ScoringOptions().calibrated is True
    assert ScoringOptions("qrhead", "smollm2-135m-hotpotqa").head_spec == "smollm2-135m-hotpotqa"
    assert ScoringOptions("icr").head_spec == "all" == ScoringOptions("icr", "all").head_spec
    assert ScoringOptions("icr", calibrate=False).calibrated is False
    with pytest.raises(InvalidInputError, match="every head; leave heads unset"):
        ScoringOptions("icr", "smollm2-135m-hotpotqa")
    with pytest.raises(InvalidInputError, match=r"unknown scoring method 'bm42'.*'icr'"):
        ScoringOptions("bm42")


def test_ranker_takes_options_or_arguments_not_both(smollm2_backend):
    with pytest.raises(InvalidInputError, match="not both"):
        QRHeadRanker("smollm2-135m", backend=smollm2_backend, calibrate=False,
                     options=ScoringOptions())


def test_icr_ranks_with_every_head_like_heads_all(smollm2_backend):
    icr = QRHeadRanker("smollm2-135m", backend=smollm2_backend, method="icr")
    legacy = QRHeadRanker("smollm2-135m", backend=smollm2_backend, heads="all")
    facts = smollm2_backend.facts
    assert len(icr.head_pairs) == facts.num_layers * facts.num_heads and icr.heads is None
    assert [r.score for r in icr.rank(QUERY, DOCS)] == [r.score for r in legacy.rank(QUERY, DOCS)]


def test_a_method_registered_here_ranks_through_the_ranker(smollm2_backend, monkeypatch,
                                                           hotpotqa_split):
    monkeypatch.setitem(SCORERS, NO_MASK.name, NO_MASK)
    example = hotpotqa_split[1][0]          # ten real paragraphs: some tokens fall under the mask
    docs = list(example.documents)
    ranker = QRHeadRanker("smollm2-135m", backend=smollm2_backend, method=NO_MASK.name)
    got = ranker.rank(example.query, docs, per_head=True)
    # By hand from the backend's rows: calibrate, sum the heads, sum every token of each span.
    _, req = ranker.prepare(example.query, docs)
    [mass] = smollm2_backend.attention_mass([req])
    token = (mass.real[:, :mass.null.shape[-1]] - mass.null).sum(dim=0)
    want = [token[a:b].sum().item() for a, b in req.real.doc_spans]
    assert [r.score for r in sorted(got, key=lambda r: r.index)] == pytest.approx(want, abs=1e-5)
    masked = QRHeadRanker("smollm2-135m", backend=smollm2_backend).rank(example.query, docs)
    by_index = {r.index: r.score for r in masked}
    assert any(abs(by_index[r.index] - r.score) > 1e-4 for r in got)   # the mask is not applied
    assert len(got.head_scores) == len(ranker.head_pairs)          # per head: the same maths
