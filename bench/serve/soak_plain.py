"""Plain vLLM for the soak bench's plugin-off run (``--plain-vllm``): vLLM's own OpenAI server
with ``QRHEAD_ENABLED=0``, started with the engine arguments and the thread binding the app's
engine gets (``engine_args.engine_kwargs``, ``qrhead=False``: no worker extension, no hook)."""

from __future__ import annotations

import os
import subprocess
import sys

from qrhead_vllm import envs


def plain_vllm_command(cfg, port: int) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) of ``vllm.entrypoints.openai.api_server`` for ``cfg``'s retriever."""
    from qrhead_vllm.dtypes import resolve_dtype
    from qrhead_vllm.integration.vllm.engine_args import (THREADS_BIND, cpu_thread_binding,
                                                          engine_kwargs)
    from qrhead_vllm.models import resolve_model

    r = cfg.retriever
    overrides = r.engine_overrides()            # as serve/vllm_server.py:engine_kwargs_for
    dtype = overrides.pop("dtype", resolve_dtype(r.dtype, log=False))
    kwargs = engine_kwargs(resolve_model(r.model).path, dtype, qrhead=False,
                           kv_cache_sequences=r.kv_cache_sequences, **overrides)
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1",
            "--port", str(port), "--served-model-name", r.model]
    for key, value in kwargs.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is not False and value is not None:
            argv += [flag, str(value)]
    from qrhead_vllm.integration.engine_env import cpu_engine_env
    env = {**os.environ, **cpu_engine_env(), envs.ENABLED: "0",
           THREADS_BIND: os.environ.get(THREADS_BIND) or cpu_thread_binding(1)}
    return argv, env


def start_plain_vllm(cfg, timeout_s: float = 900) -> tuple[str, str, object]:
    """(url, served model name, stop) of plain vLLM, answering /health."""
    from qrhead_vllm.serve.launch import free_port, wait_healthy

    port = free_port()
    argv, env = plain_vllm_command(cfg, port)
    proc = subprocess.Popen(argv, env=env)
    url = f"http://127.0.0.1:{port}"

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()

    try:
        wait_healthy(url, timeout_s)
    except TimeoutError:
        stop()
        raise
    return url, cfg.retriever.model, stop
