"""examples/ as a user runs them: each script in a subprocess against the real app, so they
cannot rot.

No second engine: the clients talk to a second Serve application (route prefix /examples)
that holds only an ingress with an API key file, bound to the session app's engine by handle
(tests/serve_harness.py:keyed_ingress). python_api.py needs no server: it loads its own
transformers copy of SmolLM2 (a few hundred MB) in its subprocess.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
KEY = "sk-examples-4b1d"
CLIENTS = ["curl.sh", "openai_client.py", "cohere_client.py", "answer_stream.py",
           "chat_citations.py"]
PARIS = "Paris is the capital and largest city of France."


@pytest.fixture(scope="module")
def examples_url(serve_app, tmp_path_factory):
    from tests.serve_harness import keyed_ingress

    with keyed_ingress(serve_app, "examples", KEY, tmp_path_factory.mktemp("keys")) as url:
        yield url


def run_example(name: str, url: str | None = None, key: str | None = None
                ) -> subprocess.CompletedProcess:
    """``bash examples/NAME`` or ``python examples/NAME`` with only QRHEAD_URL and, when given,
    QRHEAD_API_KEY set, as a user would run it; stdout and stderr together."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QRHEAD_")}
    env |= {"QRHEAD_URL": url} if url else {}
    env |= {"QRHEAD_API_KEY": key} if key else {}
    runner = "bash" if name.endswith(".sh") else sys.executable
    return subprocess.run([runner, str(EXAMPLES / name)], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=900)


def succeeded(name: str, url: str | None = None, key: str | None = None) -> str:
    out = run_example(name, url, key)
    assert out.returncode == 0, out.stdout
    return out.stdout


def ranked_lines(out: str) -> list[str]:
    """The lines of printed rankings that start with rank 1 ('1.  0.6921  ...')."""
    return [line for line in out.splitlines() if re.match(r"\s*1\.\s", line)]


def line_after(out: str, label: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(label))


def test_curl(examples_url):
    out = succeeded("curl.sh", examples_url, KEY)
    rerank = out.split("== POST /v1/chat/completions")[0]
    assert re.search(r'"index": (\d+)', rerank).group(1) == "0"     # the Paris sentence first
    assert '"content": "' in out.split("== POST /v1/answer")[0]       # the chat's reply
    assert re.search(r'"answer": "[^"]+', out), out                   # a non-empty answer
    assert "completed in 1889" in out.split('"passages"')[1]          # its source


def test_openai_client(examples_url):
    out = succeeded("openai_client.py", examples_url, KEY)
    answer = line_after(out, "answer: ").removeprefix("answer: ")
    assert "Paris" in answer
    assert line_after(out, "answer, streamed: ").removeprefix("answer, streamed: ") == answer


def test_cohere_client_v1_and_v2(examples_url):
    out = succeeded("cohere_client.py", examples_url, KEY)
    assert "/v1/rerank" in out and "/v2/rerank" in out
    firsts = ranked_lines(out)
    assert len(firsts) == 2 and all(line.endswith(PARIS) for line in firsts), out
    assert len(re.findall(r"^\s*\d+\.\s", out, re.M)) == 3 + 2        # all three, then top_n=2


def test_answer_stream(examples_url):
    out = succeeded("answer_stream.py", examples_url, KEY)
    head, sources = out.split("\nsources")
    assert line_after(head, "answer: ").removeprefix("answer: ").strip()
    assert "Eiffel Tower" in sources.splitlines()[1] and "completed in 1889" in sources
    assert re.search(r"retrieval \d+\.\d+ s, generation \d+\.\d+ s", out)


def test_chat_citations(examples_url):
    out = succeeded("chat_citations.py", examples_url, KEY)
    assert line_after(out, "answer: ").removeprefix("answer: ").strip()
    ranking = out.split("documents (best first):\n")[1].splitlines()
    assert ranking[0].endswith("[1] Eiffel Tower"), out          # the paragraph with the date
    assert "citations:" in out and " <- [" in out, out            # a sentence cites a document
    assert "[cites [" in line_after(out, "streamed: "), out       # citations in the stream


@pytest.mark.parametrize("name", CLIENTS)
def test_without_the_key_the_example_fails_with_401(examples_url, name):
    out = run_example(name, examples_url)
    assert out.returncode != 0 and "401" in out.stdout, out.stdout
    assert "Bearer" in out.stdout                      # the server's message says what to send


def test_python_api():
    out = succeeded("python_api.py")
    assert ranked_lines(out)[0].endswith(PARIS), out
