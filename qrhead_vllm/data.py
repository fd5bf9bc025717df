"""Kept for existing imports: the loaders live in :mod:`qrhead_vllm.datasets`."""

from qrhead_vllm.datasets import (HOTPOTQA, SHARED, SHARED_DATA, SPLIT_SEED, Example,  # noqa: F401
                                  load_examples, load_hotpotqa, load_shared, split_examples)
