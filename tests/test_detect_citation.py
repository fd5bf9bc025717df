"""The citation-head recipe (span='answer') through the real Ray detection job with the bundled
SmolLM2: three examples of the HotpotQA detection sample, documents cut to 25 words.

The job's per-example vectors must be those of the answer span computed here by hand (the
scoring prompt + the gold answer, the answer's tokens as the span, the "N/A" answer as the
null twin), not the question span's.
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import HOTPOTQA_DETECT
from qrhead_vllm.backends import MassRequest
from qrhead_vllm.core import TEMPLATES, Passage, score_documents
from qrhead_vllm.core.prompt import build_answer_prompts, truncate_words
from qrhead_vllm.datasets import DataError, load_hotpotqa
from qrhead_vllm.detect import DetectConfig, run_detection
from qrhead_vllm.detect.recipes import gold_mass
from qrhead_vllm.heads import HeadConfig

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
N, WORDS = 3, 25


@pytest.fixture(scope="module")
def ray_local():
    import ray
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    yield ray
    ray.shutdown()


def job(tmp_path, name: str, **kw) -> DetectConfig:
    return DetectConfig(data=str(HOTPOTQA_DETECT), split="all", limit=N, max_words=WORDS,
                        top_k=8, dtype="float32", output=str(tmp_path / f"{name}.yaml"),
                        run_dir=str(tmp_path / name), progress=False, **kw)


@pytest.fixture(scope="module")
def runs(ray_local, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cite")
    return tmp, run_detection(job(tmp, "cite", span="answer")), run_detection(job(tmp, "q"))


def expected_mass(backend, ex) -> list[float]:
    """The answer span's per-head gold mass of one example, built here without the job."""
    passages = [Passage(truncate_words(d.text, WORDS), d.title) for d in ex.documents]
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
        got = by_qid[ex.qid]["mass"]
        assert got == pytest.approx(expected_mass(smollm2_backend, ex), rel=1e-4, abs=1e-6)
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
