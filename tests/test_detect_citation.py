"""The citation-head recipe (span='answer') through the real Ray detection job with the bundled
SmolLM2: test_detect's job shape (four examples of the HotpotQA detection sample, documents cut
to 25 words).

The job's per-example vectors must be those of the answer span computed here by hand (the
scoring prompt + the gold answer, the answer's tokens as the span, the "N/A" answer as the
null twin), not the question span's.
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import HOTPOTQA_DETECT
from test_detect import N, job, ray_local  # noqa: F401  (the module's Ray session and job shape)
from qrhead_vllm.backends import MassRequest
from qrhead_vllm.core import TEMPLATES, Passage, score_documents
from qrhead_vllm.core.prompt import build_answer_prompts, truncate_words
from qrhead_vllm.datasets import DataError, load_hotpotqa
from qrhead_vllm.detect import DetectConfig, run_detection
from qrhead_vllm.detect.recipes import gold_mass
from qrhead_vllm.heads import HeadConfig

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def runs(ray_local, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cite")
    return tmp, run_detection(job(tmp, "cite", span="answer")), run_detection(job(tmp, "q"))


def expected_mass(backend, ex, max_words: int) -> list[float]:
    """The answer span's per-head gold mass of one example, built here without the job."""
    passages = [Passage(truncate_words(d.text, max_words), d.title) for d in ex.documents]
    real, null = build_answer_prompts(backend.tokenizer, TEMPLATES["chatml"], ex.query,
                                      passages, ex.answer)
    f = backend.facts
    heads = tuple((l, h) for l in range(f.num_layers) for h in range(f.num_heads))
    mass = backend.attention_mass([MassRequest(real, null, heads)])[0]
    scores = score_documents(mass.real, mass.null, real.doc_spans, per_head=True)
    return gold_mass(scores, [d.doc_id for d in ex.documents], ex.gold_ids)


def test_answer_span_job_scores_the_answer_tokens(runs, smollm2_backend):
    tmp, cite, question = runs
    examples = load_hotpotqa(HOTPOTQA_DETECT)[:N]
    by_qid = {r["qid"]: r for r in cite.records}
    for ex in examples:
        want = expected_mass(smollm2_backend, ex, cite.config.max_words)
        assert by_qid[ex.qid]["mass"] == pytest.approx(want, rel=1e-4, abs=1e-6)
    # The answer prompt is longer than the question prompt by the reply's tokens.
    q_tokens = {r["qid"]: r["num_tokens"] for r in question.records}
    assert all(r["num_tokens"] > q_tokens[r["qid"]] for r in cite.records)
    assert torch.tensor(cite.head_config.score_table).ne(
        torch.tensor(question.head_config.score_table)).any()


def test_citation_config_records_its_span(runs):
    tmp, cite, question = runs
    loaded = HeadConfig.load(tmp / "cite.yaml")
    assert loaded == cite.head_config and len(loaded.heads) == 8
    assert (loaded.provenance.span, question.head_config.provenance.span) == ("answer", "question")
    assert "span=answer" in loaded.provenance.notes
    report = json.loads((tmp / "cite.stability.json").read_text())
    assert report["span"] == "answer" and sum(report["examples"]) == N
    assert "span `answer`" in (tmp / "cite.stability.md").read_text()
    assert (tmp / "cite.png").stat().st_size > 0


def test_examples_without_an_answer_stop_before_any_actor(tmp_path):
    data = tmp_path / "plain.jsonl"
    data.write_text(json.dumps({"id": "q1", "query": "who?", "documents": ["a", "b"],
                                "gold": ["0"]}) + "\n")
    cfg = DetectConfig(data=str(data), span="answer", output=str(tmp_path / "x.yaml"),
                       run_dir=str(tmp_path / "run"), ray_address="127.0.0.1:1")
    with pytest.raises(DataError, match="example 'q1' has no 'answer'"):
        run_detection(cfg)       # an unreachable Ray address: reaching Ray would fail otherwise
