"""The docs check (tests/test_docs.py): what README.md, examples/README.md and docs/**/*.md name
must exist, so the docs cannot drift from the code.

* ``qrhead <command> --flag``: the command and each flag exist in that command's argparse parser
  (built as qrhead_vllm/cli.py builds it, nothing run). Read from inline code spans and from the
  lines of code blocks (``\\``-continued lines joined; a ``|``, ``&&``, ``;``, ``>`` or ``#`` ends
  the command). A span holding only a flag (`` `--address` ``) belongs to the last ``qrhead``
  command named earlier in its paragraph, unless a span naming another program
  (`` `ray start` ``, `` `bench/x.py` ``) came between: other tools' flags are not ours.
* A dotted serve-config key in an inline code span (`` `http.replica_wait_s` ``) is a field path
  of QRHeadServeConfig (serve/args.py); below a free-form dict field (``engine_args``) anything
  goes.
* A repository path (``configs/...``, ``scripts/...``, ``docs/...``, ...) in a code span, a code
  block or a link exists; ``<name>``/``{name}`` and ``*`` are wildcards; the value of
  ``--output`` or of a ``>`` redirect is something a command writes, not checked.
* A relative markdown link resolves inside the repository, and its ``#anchor`` matches a heading
  (GitHub's slugs) or an ``<a id=...>`` of the target.

Each problem is a :class:`Problem` naming ``file:line`` and what is missing.
"""

from __future__ import annotations

import argparse
import importlib
import re
import tomllib
import types
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Union, get_args, get_origin

import yaml
from pydantic import BaseModel

REPO = Path(__file__).resolve().parents[1]
PATH_ROOTS = ("configs", "scripts", "docs", "examples", "bench", "tests", "qrhead_vllm", "serve",
              "patches")
FILE_SUFFIXES = {"py", "sh", "md", "yaml", "yml", "json", "jsonl", "png", "txt", "toml"}


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


@dataclass(frozen=True)
class Snippet:
    """A piece of a document to check: an inline code span, a code-block line or a link target;
    ``new_sentence``: a sentence ended between this code span and the previous one."""
    line: int
    text: str
    new_sentence: bool = False


@dataclass
class Markdown:
    """One markdown file split into what the checks read."""
    rel: str
    paragraphs: list[list[Snippet]] = field(default_factory=list)   # code spans, in order
    headings: set[int] = field(default_factory=set)        # which paragraphs are headings
    code_lines: list[Snippet] = field(default_factory=list)
    yaml_blocks: list[Snippet] = field(default_factory=list)     # ```yaml blocks, whole
    links: list[Snippet] = field(default_factory=list)
    anchors: set[str] = field(default_factory=set)


def doc_files(repo: Path = REPO) -> list[Path]:
    """README.md, examples/README.md and every docs/**/*.md that exists."""
    files = [repo / "README.md", repo / "examples" / "README.md"]
    return [f for f in files if f.exists()] + sorted((repo / "docs").rglob("*.md"))


def check_repo(repo: Path = REPO) -> list[Problem]:
    problems: list[Problem] = []
    for path in doc_files(repo):
        problems += check_markdown(path.read_text(), path.relative_to(repo).as_posix(), repo)
    return problems


def check_markdown(text: str, rel: str, repo: Path = REPO) -> list[Problem]:
    """Every problem of one document (``rel``: its path inside ``repo``)."""
    doc = parse_markdown(text, rel)
    found = [*check_commands(doc), *check_keys(doc), *check_paths(doc, repo),
             *check_links(doc, repo)]
    return [Problem(rel, line, message) for line, message in sorted(found)]


# --- reading markdown ------------------------------------------------------------------------

FENCE = re.compile(r"^\s*(```|~~~)\s*(\w*)")
HEADING = re.compile(r"^#{1,6}\s")
BLOCK_START = re.compile(r"^\s*(#{1,6}\s|\||[-*+]\s|\d+[.)]\s|>)")
CODE_SPAN = re.compile(r"(`+)(.+?)(?<!`)\1(?!`)", re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_DEF = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
HTML_REF = re.compile(r"\b(?:href|src)=\"([^\"]+)\"")
SENTENCE_END = re.compile(r"[.!?]\s+[A-Z(*]")
HTML_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")


def parse_markdown(text: str, rel: str) -> Markdown:
    doc, lines = Markdown(rel), text.splitlines()
    paragraph: list[str] = []
    start = i = 0
    while i < len(lines):
        line = lines[i]
        if FENCE.match(line) or (not paragraph and line.startswith(("    ", "\t"))):
            _prose(doc, paragraph, start)
            paragraph, i = [], _code_block(doc, lines, i)
            continue
        if not line.strip() or BLOCK_START.match(line):     # a new block starts
            _prose(doc, paragraph, start)
            paragraph = []
        if line.strip():
            start = i if not paragraph else start
            paragraph.append(line)
        if HEADING.match(line):                             # a heading is one line
            _prose(doc, paragraph, start)
            paragraph = []
        i += 1
    _prose(doc, paragraph, start)
    return doc


def _code_block(doc: Markdown, lines: list[str], i: int) -> int:
    """Record a fenced or indented code block starting at ``lines[i]``; the index after it."""
    fence = FENCE.match(lines[i])
    body_start = i + 1 if fence else i
    end = body_start
    while end < len(lines) and (
            (fence and not lines[end].strip().startswith(fence.group(1))) or
            (not fence and (lines[end].startswith(("    ", "\t")) or not lines[end].strip()))):
        end += 1
    logical, first = "", body_start
    for n in range(body_start, end):
        if not logical:
            first = n
        logical += lines[n].rstrip()
        if logical.endswith("\\"):
            logical = logical[:-1] + " "
            continue
        doc.code_lines.append(Snippet(first + 1, logical))
        logical = ""
    if logical:
        doc.code_lines.append(Snippet(first + 1, logical))
    if fence and fence.group(2) in ("yaml", "yml"):
        doc.yaml_blocks.append(Snippet(body_start + 1, "\n".join(lines[body_start:end])))
    return end + 1 if fence else end


def _prose(doc: Markdown, lines: list[str], start: int) -> None:
    """One paragraph (or heading, list item, table row): its code spans, links, anchors."""
    if not lines:
        return
    text = "\n".join(lines)
    spans, previous_end = [], 0
    for m in CODE_SPAN.finditer(text):
        spans.append(Snippet(start + 1 + text.count("\n", 0, m.start()),
                             " ".join(m.group(2).split()),
                             bool(SENTENCE_END.search(text, previous_end, m.start()))))
        previous_end = m.end()
    doc.paragraphs.append(spans)
    bare = CODE_SPAN.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)
    for pattern in (LINK, REF_DEF, HTML_REF):
        for m in pattern.finditer(bare):
            doc.links.append(Snippet(start + 1 + bare.count("\n", 0, m.start()), m.group(1)))
    doc.anchors |= set(HTML_ANCHOR.findall(bare))
    if HEADING.match(text):
        doc.headings.add(len(doc.paragraphs) - 1)
        doc.anchors.add(unique_slug(heading_slug(text.lstrip("#")), doc.anchors))


def heading_slug(heading: str) -> str:
    """GitHub's anchor of a heading: markup dropped, lower case, punctuation removed, spaces to
    hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())
    text = re.sub(r"[^\w\- ]", "", text.replace("`", "").lower())
    return text.replace(" ", "-")


def unique_slug(slug: str, taken: set[str]) -> str:
    """GitHub numbers repeated headings: ``x``, ``x-1``, ``x-2``."""
    n, candidate = 0, slug
    while candidate in taken:
        n += 1
        candidate = f"{slug}-{n}"
    return candidate


# --- qrhead commands and flags ---------------------------------------------------------------

QRHEAD_CALL = re.compile(r"(?<![\w.-])qrhead\s+([a-z][\w-]*(?:/[a-z][\w-]*)*)(.*)")
COMMAND_END = re.compile(r"\s(?:\|\|?|&&|;|>>?|2>|#)|`")
FLAG = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")
FLAG_SPAN = re.compile(r"^(--?[A-Za-z][\w-]*)(?:[ =]\S.*)?$")
OTHER_PROGRAM = re.compile(r"^(?!qrhead\s)[\w.][\w./-]*\s+\S|^[\w./-]+\.(?:py|sh)$")


@lru_cache(maxsize=None)
def command_flags() -> dict[str, frozenset[str]]:
    """``command -> its option strings``, from the parsers qrhead_vllm/cli.py builds."""
    from qrhead_vllm import cli

    out = {}
    for name, description in cli.COMMANDS.items():
        parser = argparse.ArgumentParser(prog=f"qrhead {name}", description=description)
        importlib.import_module(f"qrhead_vllm.commands.{name}").add_arguments(parser)
        out[name] = frozenset(s for a in parser._actions for s in a.option_strings)
    return out


def check_commands(doc: Markdown) -> Iterable[tuple[int, str]]:
    section: list[str] = []        # the commands a heading names: "## `qrhead rerank` flags"
    for n, paragraph in enumerate(doc.paragraphs):
        if n in doc.headings:
            calls = [QRHEAD_CALL.search(s.text) for s in paragraph]
            section = next((c.group(1).split("/") for c in calls if c), [])
        context = section
        for span in paragraph:
            context = section if span.new_sentence else context
            call = QRHEAD_CALL.search(span.text)
            if call:
                context = call.group(1).split("/")
                yield from _command_problems(span.line, call)
            elif FLAG_SPAN.match(span.text) and context:
                yield from _flag_problems(span.line, context, [FLAG_SPAN.match(span.text)[1]])
            elif OTHER_PROGRAM.match(span.text):
                context = []
    for code in doc.code_lines:
        call = QRHEAD_CALL.search(code.text)
        if call:
            yield from _command_problems(code.line, call)


def _command_problems(line: int, call: re.Match) -> Iterable[tuple[int, str]]:
    args = COMMAND_END.split(call.group(2))[0]
    yield from _flag_problems(line, call.group(1).split("/"), FLAG.findall(args))


def _flag_problems(line: int, commands: list[str], flags: list[str]
                   ) -> Iterable[tuple[int, str]]:
    known = command_flags()
    for command in commands:
        if command not in known:
            yield line, f"`qrhead {command}`: no such command (there are: {', '.join(known)})"
            continue
        for flag in flags:
            if flag not in known[command]:
                yield line, f"`qrhead {command} {flag}`: no such flag (see qrhead {command} -h)"


# --- serve config keys -----------------------------------------------------------------------

def _top_level_fields() -> str:
    from qrhead_vllm.serve.args import QRHeadServeConfig
    return "|".join(QRHeadServeConfig.model_fields)


@lru_cache(maxsize=None)
def key_pattern() -> re.Pattern:
    return re.compile(rf"(?<![\w./-])((?:{_top_level_fields()})(?:\.[A-Za-z_]\w*)+)")


def check_keys(doc: Markdown) -> Iterable[tuple[int, str]]:
    named = [(span.line, key) for paragraph in doc.paragraphs for span in paragraph
             for key in key_pattern().findall(span.text)
             if key.rsplit(".", 1)[1] not in FILE_SUFFIXES]   # retriever.py: a file, not a key
    for block in doc.yaml_blocks:
        named += [(block.line + n, key) for n, key in yaml_keys(block.text)]
    for line, key in named:
        missing = missing_key_part(key)
        if missing:
            yield line, f"`{key}`: no serve-config key {missing!r} (serve/args.py)"


def yaml_keys(text: str) -> list[tuple[int, str]]:
    """(line offset, dotted key) of every key of a YAML block that is a serve config: a Ray
    Serve file (``applications[0].args``) or a mapping whose first key is a top-level field of
    QRHeadServeConfig; nothing for other YAML (head configs, detection jobs)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return []
    if isinstance(data, dict) and isinstance(data.get("applications"), list):
        data = (data["applications"][0] or {}).get("args")
    if not isinstance(data, dict) or not data or \
            not re.fullmatch(_top_level_fields(), str(next(iter(data)))):
        return []
    lines = text.splitlines()
    return [(_line_of(lines, key), key) for key in _dotted(data)]


def _dotted(data: dict, prefix: str = "") -> list[str]:
    keys = []
    for name, value in data.items():
        key = f"{prefix}{name}"
        keys += _dotted(value, key + ".") if isinstance(value, dict) and value else [key]
    return keys


def _line_of(lines: list[str], key: str) -> int:
    """The offset of the line that holds ``key``'s last part (0 when not found)."""
    last = re.compile(rf"^\s*{re.escape(key.rsplit('.', 1)[-1])}\s*:")
    return next((n for n, line in enumerate(lines) if last.match(line)), 0)


def missing_key_part(key: str) -> str | None:
    """The first prefix of a dotted key that QRHeadServeConfig does not have, else None."""
    from qrhead_vllm.serve.args import QRHeadServeConfig

    model: Any = QRHeadServeConfig
    parts = key.split(".")
    for n, part in enumerate(parts):
        if model is None:                   # a free-form dict (engine_args, env, ...)
            return None
        if not _is_model(model) or part not in model.model_fields:
            return ".".join(parts[: n + 1])
        model = _nested_model(model.model_fields[part].annotation)
    return None


def _nested_model(annotation: Any) -> Any:
    """What a field's annotation holds below it: its pydantic model (``X | None`` unwrapped),
    None for a mapping (any key goes), else the annotation itself (a leaf)."""
    union = get_origin(annotation) in (Union, types.UnionType)
    for option in get_args(annotation) if union else [annotation]:
        if get_origin(option) is dict:
            return None
        if _is_model(option):
            return option
    return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


# --- repository paths and links --------------------------------------------------------------

REPO_PATH = re.compile(rf"(?<![\w./-])((?:{'|'.join(PATH_ROOTS)})/(?:[\w./*<>-]|\{{[^}}\s]*\}})*)")
PLACEHOLDER = re.compile(r"<[^>]*>|\{[^},]*\}|(?<![A-Za-z])[A-Z][A-Z_]+(?=[._/]|$)")    # <x>, {x}, FILE
ALTERNATIVES = re.compile(r"\{([^}]*,[^}]*)\}")                               # {yaml,png}
WRITTEN = re.compile(r"(?:--output(?:-dir)?|-o|>>?)[\s=]+$")


def check_paths(doc: Markdown, repo: Path) -> Iterable[tuple[int, str]]:
    snippets = [s for p in doc.paragraphs for s in p] + doc.code_lines   # links: check_links
    for snippet in snippets:
        for m in REPO_PATH.finditer(snippet.text):
            if WRITTEN.search(snippet.text[: m.start()]):
                continue                          # a file the command writes
            path = m.group(1).rstrip(".,:;")
            if not path_exists(repo, path):
                yield snippet.line, f"`{path}`: no such file or directory in the repository"


@lru_cache(maxsize=None)
def wheel_dirs(repo: Path) -> dict[str, str]:
    """Where the wheel's package paths live in the checkout (pyproject's package-dir:
    qrhead_vllm/serve/ is serve/)."""
    pyproject = repo / "pyproject.toml"
    table = tomllib.loads(pyproject.read_text()) if pyproject.exists() else {}
    dirs = table.get("tool", {}).get("setuptools", {}).get("package-dir", {})
    return {package.replace(".", "/") + "/": folder + "/" for package, folder in dirs.items()}


def path_exists(repo: Path, path: str) -> bool:
    """``path`` names something in ``repo`` (or in the wheel, at its checkout place):
    literally, or with its placeholders as wildcards (every ``{a,b}`` alternative must exist)."""
    if (repo / path).exists():
        return True
    for package, folder in wheel_dirs(repo).items():
        if path.startswith(package):
            return path_exists(repo, folder + path.removeprefix(package))
    alternatives = ALTERNATIVES.search(path)
    if alternatives:
        return all(path_exists(repo, path[:alternatives.start()] + alt +
                               path[alternatives.end():])
                   for alt in alternatives.group(1).split(","))
    pattern = PLACEHOLDER.sub("*", path).rstrip("/")
    return "*" in pattern and any(repo.glob(pattern))


def check_links(doc: Markdown, repo: Path) -> Iterable[tuple[int, str]]:
    here = (repo / doc.rel).parent
    for link in doc.links:
        target, _, anchor = link.text.partition("#")
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue                              # http:, https:, mailto:
        if not target:
            if anchor not in doc.anchors:
                yield link.line, f"link {link.text!r}: no heading with anchor #{anchor} here"
            continue
        resolved = (here / target).resolve()
        if not resolved.is_relative_to(repo.resolve()):
            yield link.line, f"link {link.text!r} leaves the repository"
        elif not resolved.exists():
            yield link.line, f"link {link.text!r}: {_rel(resolved, repo)} does not exist"
        elif anchor and resolved.suffix == ".md" and anchor not in anchors_of(resolved):
            yield link.line, (f"link {link.text!r}: no heading with anchor #{anchor} in "
                              f"{_rel(resolved, repo)}")


@lru_cache(maxsize=None)
def anchors_of(path: Path) -> set[str]:
    return parse_markdown(path.read_text(), path.name).anchors


def _rel(path: Path, repo: Path) -> str:
    return path.relative_to(repo.resolve()).as_posix()
