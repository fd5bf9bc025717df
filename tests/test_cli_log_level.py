"""``--log-level`` on qrhead rerank / serve / detect: our loggers, vLLM's and Ray's.

vLLM configures its loggers from VLLM_LOGGING_LEVEL as an engine starts (and hands that config
to its engine processes); Ray's processes and ray.init's default read RAY_LOGGER_LEVEL. So the
checks run in fresh processes: the real command, or a fresh interpreter doing what they do.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qrhead_vllm.cli import LOG_LEVELS
from tests.test_cli_rerank_dtype import QRHEAD, rerank, scores

ENGINE_LEVELS = """
import json, logging, sys
from qrhead_vllm.cli import apply_log_level
apply_log_level(sys.argv[1] if len(sys.argv) > 1 else None)
from vllm.config import LoggingConfig
from vllm.logger import configure_logging_if_needed
configure_logging_if_needed(LoggingConfig())   # what an engine does as it starts
from ray._private import ray_constants   # what ray.init's logging_level defaults to
print(json.dumps({"vllm": logging.getLogger("vllm").getEffectiveLevel(),
                  "ray": ray_constants.LOGGER_LEVEL.upper(),
                  "ours": logging.getLogger("qrhead_vllm.ranker").getEffectiveLevel()}))
"""


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k not in ("VLLM_LOGGING_LEVEL", "RAY_LOGGER_LEVEL", "QRHEAD_LOG_LEVEL")}


def engine_levels(*level: str) -> dict:
    out = subprocess.run([sys.executable, "-c", ENGINE_LEVELS, *level], capture_output=True,
                         text=True, timeout=300, env=clean_env(), cwd="/")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def test_the_flag_reaches_vllm_and_ray_before_they_import():
    assert engine_levels() == {"vllm": 20, "ray": "INFO", "ours": 20}   # their defaults
    assert engine_levels("warning") == {"vllm": 30, "ray": "WARNING", "ours": 30}
    assert engine_levels("debug") == {"vllm": 10, "ray": "DEBUG", "ours": 10}


@pytest.mark.parametrize("command", ["rerank", "serve", "detect"])
def test_each_engine_command_takes_the_flag(command):
    out = subprocess.run([str(QRHEAD), command, "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--log-level {" + ",".join(LOG_LEVELS) + "}" in out.stdout


# A Serve replica of `qrhead serve --log-level X` inherits the command's environment (a local
# cluster's raylet and workers take it); it then runs log_to_serve() as it starts.
IN_REPLICA = """
import json, logging
from qrhead_vllm.serve.errors import log_to_serve
from qrhead_vllm.serve.launch import serve_logging_config
log_to_serve()
print(json.dumps({"ours": logging.getLogger("qrhead_vllm.serve").getEffectiveLevel(),
                  "serve": serve_logging_config()}))
"""
COMMAND = """
import subprocess, sys
from qrhead_vllm.cli import apply_log_level
apply_log_level(sys.argv[2] if len(sys.argv) > 2 else None)
sys.exit(subprocess.run([sys.executable, "-c", sys.argv[1]]).returncode)
"""


def replica_levels(*level: str) -> dict:
    out = subprocess.run([sys.executable, "-c", COMMAND, IN_REPLICA, *level],
                         capture_output=True, text=True, timeout=300, env=clean_env(), cwd="/")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def test_the_flag_reaches_the_serve_replicas():
    assert replica_levels() == {"ours": 20, "serve": None}       # INFO, Serve's own default
    assert replica_levels("debug") == {"ours": 10, "serve": {"log_level": "DEBUG"}}
    assert replica_levels("error") == {"ours": 40, "serve": {"log_level": "ERROR"}}

def test_detect_keeps_the_flag_out_of_the_job_settings(tmp_path):
    from qrhead_vllm.commands import detect

    parser = argparse.ArgumentParser()
    detect.add_arguments(parser)
    args = parser.parse_args(["--data", "d.jsonl", "--output", str(tmp_path / "o.yaml"),
                              "--log-level", "error"])
    assert args.log_level == "error"
    assert detect.config_from_args(args).data == "d.jsonl"   # DetectConfig forbids extra keys


def rerank_logs(tmp_path: Path, *flags: str) -> str:
    """stderr of a ``qrhead rerank`` that ranked all three documents."""
    out = rerank(tmp_path, *flags, env=clean_env())
    assert len(scores(out)) == 3
    return out.stderr


def test_rerank_logs_our_info_lines_unless_told_otherwise(tmp_path):
    # The transformers port: the one INFO line of ours on this path is the dtype choice.
    assert "INFO qrhead_vllm.dtypes: dtype=auto -> " in rerank_logs(tmp_path)
    assert "dtype=auto" not in rerank_logs(tmp_path, "--log-level", "warning")


@pytest.mark.slow
def test_rerank_on_vllm_at_warning_prints_no_info_line(tmp_path):
    # vLLM logs INFO by default (the engine-level test above): its engine process, started
    # by the command, reads the level from the environment the flag set. Its lines go to
    # stderr (vLLM's default is stdout), so --json's stdout parses (rerank_logs checks).
    err = rerank_logs(tmp_path, "--backend", "vllm", "--log-level", "warning")
    assert not [line for line in err.splitlines() if "INFO" in line], err[-3000:]


def test_a_level_variable_that_is_no_level_is_refused_with_the_choices(monkeypatch):
    from qrhead_vllm import envs
    monkeypatch.setenv("QRHEAD_LOG_LEVEL", "loud")
    with pytest.raises(ValueError, match="QRHEAD_LOG_LEVEL='loud' is not a log level: use one "
                                         "of debug, info, warning, error, critical"):
        envs.log_level()
    monkeypatch.setenv("QRHEAD_LOG_LEVEL", " warning ")
    assert envs.log_level() == "WARNING"
