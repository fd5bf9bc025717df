"""The core imports torch only: engines (vLLM, SGLang) and Ray share it without pulling each
other in. Proven in a fresh interpreter where importing vllm, sglang, ray, transformers,
pydantic or yaml fails (tests/test_packaging.py also imports it in a venv holding only torch)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BLOCKED = ("vllm", "sglang", "ray", "transformers", "pydantic", "yaml")

# sys.modules[name] = None makes `import name` raise ImportError, including inside the package.
_BLOCK = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in BLOCKED)


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _BLOCK + textwrap.dedent(code)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_blocking_works():
    # Negative control: without it, the import test below could pass for the wrong reason.
    result = run_python("""
        for name in ("vllm", "sglang", "ray", "transformers", "pydantic", "yaml"):
            try:
                __import__(name)
            except ImportError:
                continue
            raise SystemExit(f"{name} was importable")
        print("blocked")
    """)
    assert result.returncode == 0, result.stderr
    assert "blocked" in result.stdout


def test_core_imports_without_engines_and_builds_prompts():
    result = run_python("""
        import qrhead_vllm.core as core
        from qrhead_vllm.core.prompt import INSTRUCTION

        class CharTokenizer:
            # Duck-typed fast tokenizer: one token per character, a BOS with empty offsets.
            def __call__(self, text, return_offsets_mapping=False):
                return {"input_ids": [0] + [ord(c) for c in text],
                        "offset_mapping": [(0, 0)] + [(i, i + 1) for i in range(len(text))]}

        tok = CharTokenizer()
        docs = [core.Passage("alpha beta", "A"), core.Passage("gamma")]
        real, null = core.build_scoring_prompts(tok, core.TEMPLATES["qwen2"], "what?", docs)
        text = lambda ids: "".join(chr(i) for i in ids if i)
        assert [text(real.token_ids[a:b]) for a, b in real.doc_spans] == \\
            ["[1] A\\nalpha beta", "[2] gamma"], real.doc_spans
        assert text(real.token_ids[real.query_start:]).startswith(INSTRUCTION)
        assert null.token_ids[:null.query_start] == real.token_ids[:real.query_start]
        assert "Query: N/A" in text(null.token_ids[null.query_start:])
        blocked = ("vllm", "sglang", "ray", "transformers", "pydantic", "yaml")
        leaked = [m for m in sys.modules if m.split(".")[0] in blocked
                  and sys.modules[m] is not None]
        assert not leaked, leaked
        print("ok")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")
