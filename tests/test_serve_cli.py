"""``qrhead serve``'s printed curl calls, and the app's OpenAPI page, against the real app.

The app tests reuse test_serve_auth_app's keyed ingress over the session engine (its
``auth_url`` fixture): no engine of their own.
"""

from __future__ import annotations

import json
import os
import subprocess

import httpx
import pytest

from qrhead_vllm.commands.serve import AUTH_HEADER, curl_calls
from tests.test_serve_auth_app import KEY, MODEL, auth_url  # noqa: F401  (fixture)

URL = "http://127.0.0.1:8000"


def curl_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip().startswith("curl ")]


def test_without_a_key_the_calls_send_none():
    text = curl_calls(URL, MODEL, api_key_file=None, key_in_env=False)
    assert len(curl_lines(text)) == 2 and "Authorization" not in text and "#" not in text


def test_a_key_file_puts_the_variable_in_every_call_and_says_where_keys_are():
    text = curl_calls(URL, MODEL, api_key_file="/etc/qrhead/keys", key_in_env=False)
    assert all(AUTH_HEADER in line for line in curl_lines(text))
    assert text.splitlines()[0].strip() == (
        "# the app needs an API key: export QRHEAD_API_KEY=<a key from /etc/qrhead/keys> "
        "before pasting these")


def test_a_key_from_the_environment_is_named_never_printed(monkeypatch):
    monkeypatch.setenv("QRHEAD_API_KEY", KEY)
    text = curl_calls(URL, MODEL, api_key_file=None, key_in_env=True)
    assert all(AUTH_HEADER in line for line in curl_lines(text))
    assert KEY not in text and "set in the shell that started qrhead serve" in text


def run_printed(text: str, key: str | None) -> list[dict]:
    """Run the printed calls in bash, as a user pasting them would; their JSON bodies."""
    env = {k: v for k, v in os.environ.items() if k != "QRHEAD_API_KEY"}
    env |= {"QRHEAD_API_KEY": key} if key else {}
    out = subprocess.run(["bash", "-c", text], capture_output=True, text=True, timeout=600,
                         env=env)
    assert out.returncode == 0, out.stderr
    decoder, bodies, rest = json.JSONDecoder(), [], out.stdout.strip()
    while rest:
        body, end = decoder.raw_decode(rest)
        bodies.append(body)
        rest = rest[end:].strip()
    return bodies


@pytest.mark.slow
def test_the_printed_calls_work_against_a_keyed_app(auth_url, tmp_path):  # noqa: F811
    text = curl_calls(auth_url, MODEL, api_key_file=str(tmp_path / "keys"), key_in_env=False)
    rerank, chat = run_printed(text, key=KEY)
    assert [r["index"] for r in rerank["results"]][:1] == [0] and len(rerank["results"]) == 2
    assert chat["choices"][0]["message"]["content"]
    unset = run_printed(text, key=None)
    assert [body["error"]["code"] for body in unset] == [401, 401]


@pytest.mark.slow
def test_the_openapi_page_is_behind_the_key(auth_url):  # noqa: F811
    for path in ("/docs", "/openapi.json"):
        r = httpx.get(f"{auth_url}{path}", timeout=30)
        assert r.status_code == 401 and r.json()["error"]["code"] == 401, path
    bearer = {"authorization": f"Bearer {KEY}"}
    page = httpx.get(f"{auth_url}/docs", headers=bearer, timeout=30)
    assert page.status_code == 200 and "swagger-ui" in page.text
    schema = httpx.get(f"{auth_url}/openapi.json", headers=bearer, timeout=30)
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert {"/v1/rerank", "/v2/rerank", "/v1/answer", "/health"} <= set(paths)
    assert not any("{path}" in p for p in paths)       # the vLLM pass-through is not ours
    example = paths["/v1/rerank"]["post"]["requestBody"]["content"]["application/json"]
    assert example["example"]["model"] == MODEL
