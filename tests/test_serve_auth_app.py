"""API keys on the real app, through the openai and cohere SDKs: 401 without the key, 200 with it.

No second engine: a second Serve application (route prefix /auth) holds only an ingress with a
key file, bound to the session app's engine deployment by handle; the session app itself stays
open for the other modules.
"""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.slow
KEY = "sk-test-7f3a9c"
MODEL = "smollm2-135m"
DOCS = ["Paris is the capital of France.", "Pasta is Italian food.",
        "The Eiffel Tower is in Paris."]


@pytest.fixture(scope="module")
def auth_url(serve_app, tmp_path_factory):
    from tests.serve_harness import keyed_ingress

    with keyed_ingress(serve_app, "auth", KEY, tmp_path_factory.mktemp("keys")) as url:
        yield url


def test_openai_sdk_needs_the_key(auth_url):
    from openai import AuthenticationError, OpenAI

    with pytest.raises(AuthenticationError) as err:
        OpenAI(base_url=f"{auth_url}/v1", api_key="sk-wrong", timeout=60).models.list()
    assert err.value.status_code == 401 and "Bearer" in err.value.message
    client = OpenAI(base_url=f"{auth_url}/v1", api_key=KEY, timeout=300)
    assert MODEL in {m.id for m in client.models.list().data}
    out = client.completions.create(model=MODEL, prompt="The capital of France is",
                                    max_tokens=2, temperature=0)
    assert out.choices[0].text


def test_cohere_sdk_needs_the_key(auth_url):
    import cohere
    from cohere.errors import UnauthorizedError

    for client_class in (cohere.Client, cohere.ClientV2):       # /v1/rerank, /v2/rerank
        with pytest.raises(UnauthorizedError):
            client_class(api_key="sk-wrong", base_url=auth_url, timeout=60).rerank(
                model=MODEL, query="capital of France", documents=DOCS)
        ranked = client_class(api_key=KEY, base_url=auth_url, timeout=300).rerank(
            model=MODEL, query="capital of France", documents=DOCS, top_n=2)
        assert [r.index for r in ranked.results][:1] == [0]
        assert len(ranked.results) == 2


def test_health_is_open_and_the_session_app_unchanged(auth_url, serve_app):
    assert httpx.get(f"{auth_url}/health", timeout=30).status_code == 200
    r = httpx.post(f"{auth_url}/v1/rerank", json={"query": "q", "documents": DOCS}, timeout=30)
    assert r.status_code == 401 and r.json()["error"]["code"] == 401
    r = httpx.post(f"{serve_app.url}/v1/rerank", json={"query": "q", "documents": DOCS},
                   timeout=300)
    assert r.status_code == 200, r.text
