"""The CPU engines' memory bounds (integration/engine_env.py): set while an engine starts,
restored after, and the caller's own value wins."""

from __future__ import annotations

import os

import pytest

from qrhead_vllm.integration.engine_env import (MMAP_THRESHOLD, ONEDNN_CACHE,
                                                cpu_engine_env)


@pytest.fixture
def engine_env():
    from qrhead_vllm.integration.vllm.engine_args import engine_env
    return engine_env


def test_cpu_engines_start_with_their_memory_bounded(monkeypatch, engine_env):
    for name in (ONEDNN_CACHE, MMAP_THRESHOLD):
        monkeypatch.delenv(name, raising=False)
    with engine_env(qrhead=False):
        assert (os.environ[ONEDNN_CACHE], os.environ[MMAP_THRESHOLD]) == ("64", "65536")
    assert ONEDNN_CACHE not in os.environ and MMAP_THRESHOLD not in os.environ


def test_the_callers_value_wins(monkeypatch, engine_env):
    monkeypatch.setenv(ONEDNN_CACHE, "512")
    assert ONEDNN_CACHE not in cpu_engine_env()
    with engine_env(qrhead=False):
        assert os.environ[ONEDNN_CACHE] == "512"
