"""``qrhead rerank --backend sglang``: the command reaches the SGLang backend through the engine
registry and prints the scores the API gives on that engine. The session's engine stands in for
the one the command would start (a second SGLang engine costs minutes on a 2-core box); the
command's own start of an engine is ``make_backend``'s, shared with every other caller.

Named to run after test_sglang_gemma.py: SGLang's ``Engine.shutdown`` kills every child process
of the calling process (``kill_process_tree(os.getpid(), include_parent=False)``), so closing the
Gemma engine would take the session's SmolLM2 engine down with it if that one started first."""

from __future__ import annotations

import json

import pytest

from qrhead_vllm.ranker import QRHeadRanker
from tests.shared_backend import SharedBackend

DOCS = [{"id": "paris", "title": "Paris", "text": "Paris is the capital of France."},
        {"id": "pasta", "title": "Pasta", "text": "Pasta is a staple of Italian food."},
        {"id": "tower", "title": "Eiffel Tower", "text": "The Eiffel Tower is in Paris."}]
QUERY = "What is the capital of France?"


def test_rerank_command_on_sglang_scores_as_the_api(sglang_smollm2, monkeypatch, capsys,
                                                   tmp_path):
    from qrhead_vllm import cli, ranker
    asked = []

    def shared_backend(name, model, dtype, **kwargs):
        asked.append(name)
        return SharedBackend(sglang_smollm2.backend)

    monkeypatch.setattr(ranker, "make_backend", shared_backend)
    docs = tmp_path / "docs.json"
    docs.write_text(json.dumps(DOCS))
    code = cli.main(["rerank", "--backend", "sglang", "--query", QUERY, "--docs", str(docs),
                     "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    printed = json.loads(out.out)
    assert asked == ["sglang"] and printed["backend"] == "sglang"
    want = QRHeadRanker("smollm2-135m", backend=sglang_smollm2.backend).rank(QUERY, DOCS)
    # Ids in the same order; scores to 1e-5, not bit for bit: the API's pass finds the prompt in
    # SGLang's radix cache that the command's pass filled, so it computes only the uncached tail
    # and its sums run in another order (CI saw 3e-7 apart on one CPU).
    assert [r["id"] for r in printed["results"]] == [r.doc_id for r in want.results]
    assert [r["score"] for r in printed["results"]] == \
        pytest.approx([r.score for r in want.results], abs=1e-5)
