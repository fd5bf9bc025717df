"""The docs check: every CLI flag, serve-config key, repository path and relative link that
README.md, examples/README.md and docs/**/*.md name exists (tests/docs_check.py), so the docs
cannot drift from the code. Pure parsing: nothing starts.

The unit tests below feed the checker wrong flags, keys, paths and links, so the check itself
cannot pass by finding nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.docs_check import REPO, check_markdown, check_repo, doc_files, heading_slug


def problems(text: str, repo: Path = REPO) -> list[str]:
    return [str(p) for p in check_markdown(text, "README.md", repo)]


def test_the_docs_name_only_what_exists():
    found = check_repo()
    assert not found, (f"{len(found)} things the docs name do not exist (fix the doc, or the "
                       "code):\n" + "\n".join(map(str, found)))


def test_every_doc_is_read():
    names = {p.relative_to(REPO).as_posix() for p in doc_files()}
    assert {"README.md", "docs/architecture.md", "docs/serving.md"} <= names
    assert all(n == "README.md" or n.startswith(("docs/", "examples/")) for n in names)


# --- flags -----------------------------------------------------------------------------------

def test_a_flag_of_another_command_is_caught():
    # issue 25: `qrhead detect` joins a cluster with --ray-address; --address is serve's flag
    assert problems("Join with `qrhead detect --data d.jsonl --address host:6379`.") == [
        "README.md:1: `qrhead detect --address`: no such flag (see qrhead detect -h)"]
    assert problems("Join with `qrhead detect --ray-address host:6379`.") == []


def test_a_bare_flag_span_belongs_to_the_command_before_it_in_the_sentence():
    text = ("Intro line.\n`qrhead serve` and `qrhead detect` without `--address` start a "
            "cluster.\nBut `qrhead serve` with `--address` joins one. Detection keeps its own "
            "order (`--reverse-docs`).")
    assert problems(text) == [
        "README.md:2: `qrhead detect --address`: no such flag (see qrhead detect -h)"]


def test_a_heading_naming_a_command_gives_its_flags_their_owner():
    text = "## `qrhead rerank`\n\nMore flags: `--top-k`, `--json`, `--top-n`.\n"
    assert problems(text) == [
        "README.md:3: `qrhead rerank --top-n`: no such flag (see qrhead rerank -h)"]


def test_code_blocks_joined_lines_and_other_programs():
    text = ("Run:\n\n```bash\n.venv/bin/qrhead rerank --query q \\\n    --top-n 3 --json\n"
            "pip install --no-deps --index-url https://x qrhead-vllm\n"
            "curl -sS --fail-with-body localhost:8000/health | python -m json.tool --indent 2\n"
            "qrhead serve --port 8080 2>&1 | tee log --append   # --comment-flag\n```\n\n"
            "    qrhead detect --data d.jsonl --placement spread --adress x\n\n"
            "Then `ray start --head` with `--num-cpus 1`, and `pip install --pre`.\n")
    assert problems(text) == [
        "README.md:4: `qrhead rerank --top-n`: no such flag (see qrhead rerank -h)",
        "README.md:11: `qrhead detect --adress`: no such flag (see qrhead detect -h)"]


def test_every_command_of_a_slash_list_has_the_flag_and_unknown_commands_are_caught():
    assert problems("`qrhead rerank/serve/detect --dtype` and `qrhead frobnicate`") == [
        "README.md:1: `qrhead frobnicate`: no such command (there are: rerank, detect, serve, "
        "heads)"]
    assert problems("`qrhead rerank/serve --ray-address`") == [
        "README.md:1: `qrhead rerank --ray-address`: no such flag (see qrhead rerank -h)",
        "README.md:1: `qrhead serve --ray-address`: no such flag (see qrhead serve -h)"]


# --- serve-config keys -----------------------------------------------------------------------

def test_serve_config_keys():
    good = ("`http.replica_wait_s`, `retriever.dtype: bfloat16`, `generator.model`, "
            "`retriever.engine_args.max_num_seqs` (free-form), "
            "`generator.deployment.autoscaling_config.min_replicas`, `http.ingress.num_replicas`,"
            " serve/`retriever.py`, `self.retriever.options`")
    assert problems(good) == []
    assert problems("`http.replica_wait` and\n`retriever.dtype.bits`") == [
        "README.md:1: `http.replica_wait`: no serve-config key 'http.replica_wait' "
        "(serve/args.py)",
        "README.md:2: `retriever.dtype.bits`: no serve-config key 'retriever.dtype.bits' "
        "(serve/args.py)"]


def test_serve_config_yaml_blocks():
    text = ("```yaml\napplications:\n- name: qrhead\n  args:\n    retriever:\n      model: m\n"
            "      engine_args: {max_num_seqs: 4}\n    http:\n      replica_wait: 30\n```\n\n"
            "```yaml\nretriever:\n  dtype: bfloat16\n  deployment:\n    num_replica: 2\n```\n\n"
            "```yaml\nname: smollm2-135m-hotpotqa   # a head config, not a serve config\n"
            "heads: [[1, 2]]\n```\n")
    assert problems(text) == [
        "README.md:9: `http.replica_wait`: no serve-config key 'http.replica_wait' "
        "(serve/args.py)",
        "README.md:16: `retriever.deployment.num_replica`: no serve-config key "
        "'retriever.deployment.num_replica' (serve/args.py)"]


# --- paths and links -------------------------------------------------------------------------

@pytest.fixture
def repo(tmp_path):
    (tmp_path / "configs" / "heads").mkdir(parents=True)
    for name in ("a-hotpotqa.yaml", "a-hotpotqa.png"):
        (tmp_path / "configs" / "heads" / name).write_text("")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text(
        "# Guide\n\n## Hello, `World`!\n\nText.\n\n## Hello, World\n\n<a id=\"custom\"></a>\n")
    return tmp_path


def test_repository_paths(repo):
    good = ("`configs/heads/a-hotpotqa.yaml`, `configs/heads/<model>-hotpotqa.{yaml,png}`, "
            "`configs/heads/NAME.yaml`, `docs/`\n\n```bash\ncat configs/heads/a-hotpotqa.png\n"
            "qrhead detect --data d.jsonl --output configs/heads/new.yaml > configs/x.log\n```\n")
    assert problems(good, repo) == []
    bad = ("`configs/heads/b-hotpotqa.yaml` and `configs/heads/<model>-hotpotqa.{yaml,pdf}`\n\n"
           "```bash\nbash scripts/nope.sh\n```\n")
    assert problems(bad, repo) == [
        "README.md:1: `configs/heads/<model>-hotpotqa.{yaml,pdf}`: no such file or directory "
        "in the repository",
        "README.md:1: `configs/heads/b-hotpotqa.yaml`: no such file or directory in the "
        "repository",
        "README.md:4: `scripts/nope.sh`: no such file or directory in the repository"]


def test_links_and_anchors(repo):
    assert heading_slug(" Hello, `World`!") == "hello-world"
    good = ("[g](docs/guide.md), [h](docs/guide.md#hello-world), [h2](docs/guide.md#hello-world-1)"
            ", [c](docs/guide.md#custom), [web](https://example.org/x.md), [me](#top)\n\n"
            "# Top\n\n[ref]: docs/guide.md\n")
    assert problems(good, repo) == []
    bad = ("[a](docs/nope.md) and [b](docs/guide.md#goodbye)\n"
           "`[not a link](nope.md)` [c](../outside.md) [d](#nowhere)\n\n"
           "```md\n[also not](nope.md)\n```\n")
    assert problems(bad, repo) == [
        "README.md:1: link 'docs/guide.md#goodbye': no heading with anchor #goodbye in "
        "docs/guide.md",
        "README.md:1: link 'docs/nope.md': docs/nope.md does not exist",
        "README.md:2: link '#nowhere': no heading with anchor #nowhere here",
        "README.md:2: link '../outside.md' leaves the repository"]
