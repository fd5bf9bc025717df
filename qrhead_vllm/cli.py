"""``qrhead`` command line: one subcommand per module in ``qrhead_vllm.commands``.

Each command module defines ``add_arguments(parser)`` and ``run(args) -> int``; modules are
imported only when their command runs, so ``qrhead --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from qrhead_vllm import envs

COMMANDS = {
    "rerank": "Rank documents for a query with the retrieval heads and print the ranking.",
    "detect": "Find the retrieval heads of a model on labelled data (a Ray job).",
    "serve": "Start the Ray Serve app (OpenAI API, /v1/rerank, retrieval-augmented answers).",
    "heads": "List the shipped head sets, or show one as a layers x heads grid.",
}

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
# The engines' own level variables: vLLM reads its variable as an engine starts and hands the
# level to its engine processes; Ray's raylet and workers inherit this process's environment. So
# they are set, not just the loggers of this process; ours too, for the Serve replicas.
ENGINE_LOG_ENV = ("VLLM_LOGGING_LEVEL", "RAY_LOGGER_LEVEL", envs.LOG_LEVEL)
ENGINE_LOGGERS = ("vllm", "ray")
# vLLM logs to stdout unless told otherwise, which mixes its lines into `qrhead rerank --json`:
# logs go to stderr, as ours do (VLLM_LOGGING_STREAM set by the user still wins).
VLLM_STREAM = ("VLLM_LOGGING_STREAM", "ext://sys.stderr")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="qrhead", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # prints usage / the error for an unknown command
        return 2
    module = importlib.import_module(f"qrhead_vllm.commands.{argv[0]}")
    cmd = argparse.ArgumentParser(prog=f"qrhead {argv[0]}", description=COMMANDS[argv[0]])
    module.add_arguments(cmd)
    return module.run(cmd.parse_args(argv[1:]))


def add_log_level(parser: argparse.ArgumentParser) -> None:
    """``--log-level``: one flag for our loggers, vLLM's and Ray's (commands that start them)."""
    parser.add_argument("--log-level", choices=LOG_LEVELS, default=None,
                        help="log level of qrhead_vllm, vLLM and Ray (default: info for ours; "
                             "vLLM and Ray keep VLLM_LOGGING_LEVEL / RAY_LOGGER_LEVEL or their "
                             "own default). Processes of a cluster joined with --address read "
                             "their own environment")


def apply_log_level(level: str | None) -> None:
    """Set ``level`` (None: info for ours, the engines' levels untouched) before vLLM or Ray
    start, and send vLLM's log lines to stderr, so stdout holds only the command's output.

    A flag wins over the environment (the package's one precedence rule), so a given level
    overwrites VLLM_LOGGING_LEVEL and RAY_LOGGER_LEVEL for this process and its children.
    """
    logging.basicConfig(format=LOG_FORMAT)   # a no-op when the root logger has a handler
    os.environ.setdefault(*VLLM_STREAM)
    logging.getLogger("qrhead_vllm").setLevel((level or "info").upper())
    if level is None:
        return
    for name in ENGINE_LOG_ENV:
        os.environ[name] = level.upper()
    for name in ENGINE_LOGGERS:              # already imported: their import-time setup is done
        logging.getLogger(name).setLevel(level.upper())


if __name__ == "__main__":
    sys.exit(main())
