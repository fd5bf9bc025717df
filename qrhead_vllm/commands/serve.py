"""``qrhead serve``: start the whole Serve app on a local Ray cluster and print its URL.

With no arguments it runs the CPU default (``configs/serve/cpu.yaml``: one bundled SmolLM2 engine
for retrieval and generation) on http://127.0.0.1:8000 and blocks until Ctrl-C, then shuts the
app and Ray down. ``--config`` takes any serve config file; the flags override it. To join a
running cluster instead, pass ``--address`` (or use ``serve run`` / ``serve deploy``).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from qrhead_vllm import dtypes, envs
from qrhead_vllm.cli import add_log_level, apply_log_level

EXIT_USER_ERROR = 2
CURL = """\
  curl -s {url}/v1/rerank{auth} -H 'content-type: application/json' \\
    -d '{{"model": "{model}", "query": "What is the capital of France?", "top_n": 2,
         "documents": ["Paris is the capital of France.", "Pasta is Italian food.",
                       "The Eiffel Tower is in Paris."]}}'
  curl -s {url}/v1/chat/completions{auth} -H 'content-type: application/json' \\
    -d '{{"model": "{model}", "max_tokens": 32,
         "messages": [{{"role": "user", "content": "Hi!"}}]}}'"""
# Double quotes: the shell expands the variable, so the key itself is never printed.
AUTH_HEADER = ' -H "Authorization: Bearer $QRHEAD_API_KEY"'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="serve config YAML (default: configs/serve/cpu.yaml)")
    parser.add_argument("--host", help="bind address (default from the config: 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default from the config: 8000)")
    parser.add_argument("--model", help="retriever model: bundled name, HF dir or hub id")
    parser.add_argument("--heads", help="head set: default, all, a shipped name or a path")
    parser.add_argument("--dtype", choices=dtypes.CHOICES,
                        help="engine dtype (default auto: bfloat16 on CPUs with native bf16, "
                             "else float32)")
    parser.add_argument("--max-model-len", type=int, help="retriever context window")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray cluster "
                                                     "(default: all of this machine)")
    parser.add_argument("--api-key-file", help="file of API keys clients must send as "
                        "'Authorization: Bearer <key>', one per line (or set QRHEAD_API_KEY; "
                        "neither: no key needed, allowed on a loopback bind only)")
    parser.add_argument("--allow-unauthenticated", action="store_true", default=None,
                        help="start on a non-loopback --host (e.g. 0.0.0.0) without any API "
                             "key: an open server, on purpose (http.allow_unauthenticated)")
    parser.add_argument("--address", help="join this Ray cluster (host:port, ray://host:port "
                        "or auto) instead of starting a fresh local one; an address that does "
                        "not answer within 15 s is an error")
    add_log_level(parser)


def _overrides(args: argparse.Namespace) -> dict:
    pairs = {"http.host": args.host, "http.port": args.port, "retriever.model": args.model,
             "retriever.heads": args.heads, "retriever.dtype": args.dtype,
             "retriever.max_model_len": args.max_model_len,
             # absolute: the ingress replica reads it from another working directory
             "http.api_key_file": args.api_key_file and os.path.abspath(args.api_key_file),
             "http.allow_unauthenticated": args.allow_unauthenticated}
    return {k: v for k, v in pairs.items() if v is not None}


def curl_calls(url: str, model: str, api_key_file: str | None, key_in_env: bool) -> str:
    """Ready-to-paste curl calls. With a key configured they send ``$QRHEAD_API_KEY`` and a
    first line says where that variable's value comes from; the key is never printed."""
    calls = CURL.format(url=url, model=model,
                        auth=AUTH_HEADER if api_key_file or key_in_env else "")
    if key_in_env:
        note = ("the app needs an API key: these send $QRHEAD_API_KEY, set in the shell that "
                "started qrhead serve (export it where you paste them)")
    elif api_key_file:
        note = (f"the app needs an API key: export QRHEAD_API_KEY=<a key from {api_key_file}> "
                "before pasting these")
    else:
        return calls
    return f"  # {note}\n{calls}"


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM (systemd, docker stop, kill) stops as cleanly as Ctrl-C


def run(args: argparse.Namespace) -> int:
    apply_log_level(args.log_level)   # before Ray starts: its processes inherit the level
    from pydantic import ValidationError

    from qrhead_vllm.ray_cluster import ClusterUnreachableError
    from qrhead_vllm.serve.builder import DEFAULT_CONFIG, load_config
    from qrhead_vllm.serve.errors import validation_message
    from qrhead_vllm.serve.launch import start_local, stop_local

    try:
        cfg = load_config({"config": args.config or str(DEFAULT_CONFIG), **_overrides(args)})
    except (OSError, ValidationError) as e:     # e.g. an open non-loopback bind: before Ray
        detail = validation_message(e) if isinstance(e, ValidationError) else e
        print(f"qrhead serve: error: bad config: {detail}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(f"qrhead serve: starting {cfg.retriever.model} (this takes a minute or two) ...",
          file=sys.stderr)
    try:
        url = start_local(cfg, num_cpus=args.num_cpus, address=args.address)
        signal.signal(signal.SIGTERM, _interrupt)  # after ray.init, which installs its own
        print(f"qrhead serve: ready at {url}  (OpenAI API under {url}/v1, rerank at "
              f"{url}/v1/rerank, answers at {url}/v1/answer; Ctrl-C stops)")
        model = (cfg.retriever.served_model_name or [cfg.retriever.model])[0]
        print(curl_calls(url, model, cfg.http.api_key_file, envs.api_key() is not None),
              flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("qrhead serve: stopping", file=sys.stderr)
        return 0
    except ClusterUnreachableError as e:
        print(f"qrhead serve: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    finally:
        stop_local()
