"""``qrhead`` command line: one subcommand per module in ``qrhead_vllm.commands``.

Each command module defines ``add_arguments(parser)`` and ``run(args) -> int``; modules are
imported only when their command runs, so ``qrhead --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "rerank": "Rank documents for a query with the retrieval heads and print the ranking.",
    "detect": "Find the retrieval heads of a model on labelled data (a Ray job).",
    "serve": "Start the Ray Serve app (OpenAI API, /v1/rerank, retrieval-augmented answers).",
}


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


if __name__ == "__main__":
    sys.exit(main())
