"""``python -m qrhead_vllm.detect ...``: the entrypoint for ``ray job submit`` (same flags as
``qrhead detect``)."""

import argparse
import sys

from qrhead_vllm.commands import detect


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qrhead_vllm.detect",
                                     description="Find the retrieval heads of a model (Ray job).")
    detect.add_arguments(parser)
    return detect.run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
