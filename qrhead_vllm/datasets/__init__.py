"""The one loader for detection, benches and tests: every format becomes a list of
:class:`Example` (``load_examples``), and the shared data files have names (``SHARED``).

Formats (``auto`` picks by path and first record): ``shared`` (alias ``hotpotqa``: the shared
JSONL files), ``qrhead`` (QRHead/ICR JSON), ``jsonl`` (plain), ``beir`` (a directory); see
:mod:`~qrhead_vllm.datasets.records` and :mod:`~qrhead_vllm.datasets.beir`.
"""

from __future__ import annotations

from pathlib import Path

from qrhead_vllm import envs
from qrhead_vllm.datasets.beir import load_beir_dir
from qrhead_vllm.datasets.example import SPLIT_SEED, DataError, Example, split_examples
from qrhead_vllm.datasets.records import (combined_sha256, first_duplicate, guess_record_format,
                                          load_record_file, sha256_file)

FORMATS = ("auto", "shared", "hotpotqa", "qrhead", "jsonl", "beir")


# The shared evaluation files by name, relative to the shared data folder (shared_data()).
SHARED_FILES = {
    "hotpotqa": "hotpotqa/distractor-dev-70.jsonl",
    "dl19": "trec-dl/dl19_bm25_top100.jsonl",
    "scifact": "beir-scifact/scifact_test_bm25_top20_dev100.jsonl",
    "musique": "musique/musique_train100.jsonl",
}


def shared_data() -> Path:
    """The project's shared data: QRHEAD_DATA_DIR, else ``../shared/data`` beside the checkout.
    Read when data is loaded, not at import: an installed wheel has no checkout beside it."""
    return envs.data_dir(Path(__file__).resolve().parents[3] / "shared" / "data")


def shared_path(name: str) -> Path:
    """The path of a shared file by name (``hotpotqa``, ``dl19``, ``scifact``, ``musique``)."""
    if name not in SHARED_FILES:
        raise DataError(f"unknown shared data set {name!r}; choose one of {sorted(SHARED_FILES)}")
    return shared_data() / SHARED_FILES[name]


def load_examples(path: str | Path, fmt: str = "auto", *, beir_split: str = "test",
                  candidates: str | None = None) -> tuple[list[Example], dict[str, str]]:
    """Read a data set → (examples, {file: sha256} of every file read).

    Raises:
        DataError: on the first malformed record, a missing file or a repeated example id.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"data {path} does not exist")
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; choose one of {FORMATS}")
    if fmt == "beir" or (fmt == "auto" and path.is_dir()):
        examples, hashes = load_beir_dir(path, beir_split, candidates)
    else:
        examples = load_record_file(path, guess_record_format(path) if fmt == "auto" else fmt)
        hashes = {str(path): sha256_file(path)}
    dup = first_duplicate(e.qid for e in examples)
    if dup is not None:
        raise DataError(f"{path}: example id {dup!r} appears twice")
    return examples, hashes


def load_shared(name_or_path: str | Path) -> list[Example]:
    """A shared data file by name (``hotpotqa``, ``dl19``, ``scifact``, ``musique``) or path."""
    name = str(name_or_path)
    path = shared_path(name) if name in SHARED_FILES else Path(name_or_path)
    return load_examples(path, "shared")[0]


def load_hotpotqa(path: str | Path | None = None) -> list[Example]:
    """The shared HotpotQA distractor file (or any file of the same shape)."""
    return load_shared(path or "hotpotqa")


__all__ = ["Example", "DataError", "split_examples", "SPLIT_SEED", "load_examples",
           "load_shared", "load_hotpotqa", "load_beir_dir", "combined_sha256", "sha256_file",
           "SHARED_FILES", "shared_data", "shared_path", "FORMATS"]
