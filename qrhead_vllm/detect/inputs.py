"""Detection inputs: the package's one loader (:mod:`qrhead_vllm.datasets`) under the names the
detection job has always used. Formats: ``shared``/``hotpotqa``, ``qrhead``, ``jsonl``, ``beir``."""

from qrhead_vllm.datasets import DataError, combined_sha256, load_examples, sha256_file  # noqa: F401

DetectInputError = DataError   # the detection job's name for a malformed input
