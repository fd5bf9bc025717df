"""Protected bind (issue 27): a non-loopback bind without an API key is refused when the config is
read, so `qrhead serve`, `serve run` / `serve deploy` (the builder) and Python all refuse before
anything starts, with a message naming both fixes; a key (file or QRHEAD_API_KEY), a loopback
address, or an explicit http.allow_unauthenticated lets it start. Nothing here starts Ray."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from qrhead_vllm import configs
from qrhead_vllm.commands import serve as serve_command
from qrhead_vllm.serve.args import HTTPConfig, QRHeadServeConfig, is_loopback
from qrhead_vllm.serve.builder import build_qrhead_app, load_config
from qrhead_vllm.serve.launch import free_port

FIXES = ("QRHEAD_API_KEY", "http.api_key_file", "--api-key-file", "http.allow_unauthenticated",
         "--allow-unauthenticated")


@pytest.fixture(autouse=True)
def no_key_in_env(monkeypatch):
    monkeypatch.delenv("QRHEAD_API_KEY", raising=False)


def refusal(**http) -> str:
    with pytest.raises(ValidationError) as err:
        QRHeadServeConfig(http=http)
    return str(err.value)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "fe80::1", "qrhead.example.org"])
def test_a_non_loopback_bind_without_a_key_is_refused_naming_the_fixes(host):
    message = refusal(host=host)
    assert f"bind address {host!r}" in message
    assert all(fix in message for fix in FIXES), message


@pytest.mark.parametrize("host", ["127.0.0.1", "127.3.2.1", "::1", "[::1]", "localhost",
                                  "LocalHost"])
def test_a_loopback_bind_needs_no_key(host):
    assert is_loopback(host)
    assert QRHeadServeConfig(http={"host": host}).http.loopback


def test_a_key_file_a_key_in_the_environment_or_the_explicit_allowance_lets_it_start(
        monkeypatch):
    assert HTTPConfig(host="0.0.0.0", api_key_file="/etc/qrhead/api-keys")  # read per replica
    assert HTTPConfig(host="0.0.0.0", allow_unauthenticated=True).allow_unauthenticated
    monkeypatch.setenv("QRHEAD_API_KEY", "k" * 32)
    assert not HTTPConfig(host="0.0.0.0").loopback


def test_a_blank_key_in_the_environment_is_no_key(monkeypatch):
    monkeypatch.setenv("QRHEAD_API_KEY", "   ")
    refusal(host="0.0.0.0")


@pytest.mark.parametrize("name", ["cluster.yaml", "cluster-cpu.yaml"])
def test_the_shipped_cluster_configs_bind_everywhere_with_a_key_file(name):
    path = configs.path("serve", name)
    cfg = QRHeadServeConfig.from_yaml(path)
    assert not cfg.http.loopback and cfg.http.api_key_file and not cfg.http.allow_unauthenticated
    with pytest.raises(ValidationError, match="no API key is configured"):
        QRHeadServeConfig.from_yaml(path, **{"http.api_key_file": None})


def test_the_builder_refuses_as_serve_run_and_serve_deploy_call_it():
    with pytest.raises(ValidationError, match="http.allow_unauthenticated"):
        build_qrhead_app({"http.host": "0.0.0.0"})
    assert load_config({"http.host": "0.0.0.0", "http.allow_unauthenticated": True})


def serve_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve_command.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_the_serve_flags_set_the_config_keys(tmp_path):
    allowed = serve_command._overrides(serve_args("--host", "0.0.0.0",
                                                  "--allow-unauthenticated"))
    assert allowed == {"http.host": "0.0.0.0", "http.allow_unauthenticated": True}
    assert load_config(allowed).http.allow_unauthenticated
    assert "http.allow_unauthenticated" not in serve_command._overrides(serve_args())
    keys = tmp_path / "keys"
    keyed = serve_command._overrides(serve_args("--host", "0.0.0.0", "--api-key-file",
                                                str(keys)))
    assert load_config(keyed).http.api_key_file == str(keys)


def test_qrhead_serve_on_0000_without_a_key_exits_2_before_starting_ray(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("QRHEAD_API_KEY", "RAY_ADDRESS")}
    env["RAY_TMPDIR"] = str(tmp_path)          # a Ray that started would write its session here
    out = subprocess.run([sys.executable, "-m", "qrhead_vllm.cli", "serve", "--host", "0.0.0.0",
                          "--port", str(free_port())], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "qrhead serve: error: bad config" in out.stderr
    assert all(fix in out.stderr for fix in FIXES), out.stderr
    assert "Traceback" not in out.stderr and "starting" not in out.stderr
    assert list(Path(tmp_path).iterdir()) == [], "Ray started before the refusal"
