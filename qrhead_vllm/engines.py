"""The engine registry: every engine QRHead scores on, named once.

Each entry says where the engine's pieces live (as ``"module:attribute"`` strings, imported only
when used: engines are optional extras and must not load with the package). Everything that
offers a choice of engine derives it from here: :func:`make_backend`, ``QRHeadRanker``'s
``backend=``, ``qrhead rerank --backend``, ``qrhead detect --backend`` (``DetectConfig``),
the Serve config's ``engine`` field and its per-engine argument names, and the Serve server
class of each engine. Adding an engine is one entry here (docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import import_module
from typing import TYPE_CHECKING, Any, Literal

from qrhead_vllm.errors import InvalidInputError

if TYPE_CHECKING:
    from qrhead_vllm.backends import ScoringBackend


@dataclass(frozen=True)
class EngineSpec:
    """One engine and where its pieces live."""

    name: str
    backend: str                         # "module:Class" of its ScoringBackend
    server: str | None = None            # "module:Class" of its Ray Serve server (None: no Serve)
    generates: bool = False              # its Serve server also bridges the OpenAI routes
    score_only: bool = False             # it can start a score-only (layer-cut) engine
    gpu_kwargs: dict[str, Any] = field(default_factory=dict)  # backend defaults given a GPU
    # Serve config field -> this engine's argument name (None: the engine has no equivalent).
    arg_names: dict[str, str | None] = field(default_factory=dict)

    def backend_class(self) -> type:
        return load(self.backend)

    def server_class(self) -> type:
        if self.server is None:
            raise InvalidInputError(f"engine {self.name!r} has no Serve server; use one of "
                                    f"{SERVE_ENGINES}")
        return load(self.server)

    def engine_args(self, named: dict[str, Any]) -> dict[str, Any]:
        """Config settings under this engine's argument names (unset and unmapped left out)."""
        return {self.arg_names.get(k, k): v for k, v in named.items()
                if v is not None and self.arg_names.get(k, k) is not None}


def load(path: str) -> Any:
    """The attribute a ``"module:attribute"`` string names (imports the module)."""
    module, _, attr = path.partition(":")
    return getattr(import_module(module), attr)


_VLLM_ARGS: dict[str, str | None] = {}        # the Serve config uses vLLM's own names
_SGLANG_ARGS = {"max_model_len": "context_length", "tensor_parallel_size": "tp_size",
                "pipeline_parallel_size": "pp_size",
                "gpu_memory_utilization": "mem_fraction_static",
                "enforce_eager": None}         # SGLang scoring engines always prefill eagerly

ENGINES: dict[str, EngineSpec] = {s.name: s for s in (
    EngineSpec("transformers", "qrhead_vllm.backends.transformers_backend:TransformersBackend",
               gpu_kwargs={"device": "cuda"}),
    EngineSpec("vllm", "qrhead_vllm.integration.vllm.backend:VLLMBackend",
               server="qrhead_vllm.serve.vllm_server:VLLMServer", generates=True,
               score_only=True, arg_names=_VLLM_ARGS),
    EngineSpec("sglang", "qrhead_vllm.integration.sglang.backend:SGLangBackend",
               server="qrhead_vllm.serve.sglang_server:SGLangServer", arg_names=_SGLANG_ARGS),
)}

ENGINE_NAMES: tuple[str, ...] = tuple(ENGINES)
SERVE_ENGINES: tuple[str, ...] = tuple(n for n, s in ENGINES.items() if s.server)
DEFAULT_ENGINE = "transformers"          # the reference port: no engine extra needed
DEFAULT_SERVE_ENGINE = SERVE_ENGINES[0]

# Literals for pydantic fields (built from the tuples: one list of names, here).
EngineName = Literal[ENGINE_NAMES]               # type: ignore[valid-type]
ServeEngineName = Literal[SERVE_ENGINES]         # type: ignore[valid-type]


def engine(name: str) -> EngineSpec:
    """The registry entry of ``name``; an unknown name is an error listing the choices."""
    try:
        return ENGINES[name]
    except KeyError:
        raise InvalidInputError(f"unknown engine (backend) {name!r}; choose one of "
                                f"{ENGINE_NAMES}") from None


def make_backend(name: str, model: str, dtype: str, **engine_kwargs) -> "ScoringBackend":
    """Start the scoring backend ``name`` on ``model`` (the engine is imported only now)."""
    from qrhead_vllm.dtypes import resolve_dtype
    from qrhead_vllm.models import resolve_model
    spec = engine(name)
    dtype = resolve_dtype(dtype, engine_kwargs.get("device"))   # "auto": per CPU / GPU
    resolved = resolve_model(model)
    return spec.backend_class()(resolved.path, resolved.model_id, dtype=dtype, **engine_kwargs)
