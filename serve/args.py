"""QRHeadServeConfig: every knob of the Serve app, typed and described once.

One object drives the three entry points (``serve run`` / ``serve deploy`` with a Serve config
file whose ``applications[0].args`` holds these fields, ``qrhead serve``, and
:func:`qrhead_vllm.serve.builder.build_qrhead_app` from Python). ``configs/serve/*.yaml`` are Ray Serve
config files, so :meth:`QRHeadServeConfig.from_yaml` reads their ``args`` block; a bare mapping
of these fields is accepted too.

Roles: ``retriever`` is always an engine with the QRHead hook. ``generator: null`` means the
retriever's engine also answers the OpenAI API (the CPU default: one small engine for both);
otherwise the generator is a separate deployment with its own resources (e.g. 70B on 8 GPUs).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Callable

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from qrhead_vllm import envs
from qrhead_vllm.engines import (DEFAULT_SERVE_ENGINE, SERVE_ENGINES, EngineSpec,
                                 ServeEngineName, engine)
from qrhead_vllm.dtypes import resolve_dtype


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class DeploymentOptions(_Config):
    """How Ray Serve places and scales one deployment (passed to ``Deployment.options``)."""

    num_replicas: int = Field(1, gt=0, description="Replicas of this deployment (ignored "
                                                   "when autoscaling_config is set).")
    autoscaling_config: dict[str, Any] | None = Field(
        None, description="Ray Serve's AutoscalingConfig (min_replicas, max_replicas, "
                          "target_ongoing_requests, upscale_delay_s, ...): Serve adds engine "
                          "replicas under load and removes them when idle; each replica is a "
                          "whole engine, so size max_replicas by the cluster's memory.")
    max_ongoing_requests: int = Field(
        256, gt=0, description="Concurrent requests per replica; vLLM batches them, so keep it "
                               "high (Serve's default of 5 would queue rerank bursts).")
    max_queued_requests: int = Field(
        128, ge=-1, description="Requests that may wait for a busy replica (counted at each "
                                "caller); one more gets 503 with Retry-After at once instead of "
                                "waiting without limit. -1: no bound (Serve's default).")
    ray_actor_options: dict[str, Any] = Field(
        default_factory=lambda: {"num_cpus": 1},
        description="Ray actor options of each replica (num_cpus, num_gpus, runtime_env, ...). "
                    "Never ask for more CPUs than the cluster has: vLLM's own CPU threads are "
                    "pinned by VLLM_CPU_OMP_THREADS_BIND, not by this reservation.")
    max_replicas_per_node: int | None = Field(
        None, gt=0, description="At most N replicas of this deployment on one node (1, with "
                                "num_replicas = the node count: one per node).")
    placement_group_bundles: list[dict[str, float]] | None = Field(
        None, description="Bundles of the replica's placement group, e.g. one CPU bundle plus "
                          "8 GPU bundles for tensor_parallel_size=8 with the Ray executor.")
    placement_group_strategy: str | None = Field(
        None, description="PACK, STRICT_PACK (one node, what TP wants), SPREAD, ...")
    graceful_shutdown_timeout_s: float = Field(
        30, gt=0, description="Time a stopping replica gets to finish the requests in flight "
                              "before it is killed.")
    graceful_shutdown_wait_loop_s: float = Field(
        1, gt=0, description="How often a stopping replica checks whether its requests in "
                             "flight are done.")
    health_check_period_s: float = Field(
        10, gt=0, description="How often Serve calls the replica's check_health (an engine "
                              "deployment scores a tiny request, at most once per period).")
    health_check_timeout_s: float = Field(
        30, gt=0, description="A health check slower than this counts as failed; the replica "
                              "is restarted.")

    @model_validator(mode="after")
    def _check_autoscaling(self) -> "DeploymentOptions":
        if self.autoscaling_config is not None:
            from ray.serve.config import AutoscalingConfig   # lazy: configs parse without Ray
            unknown = set(self.autoscaling_config) - set(AutoscalingConfig.model_fields)
            if unknown:                                       # Serve ignores them silently
                raise ValueError(f"autoscaling_config: unknown field(s) {sorted(unknown)}; "
                                 f"Ray Serve's are {sorted(AutoscalingConfig.model_fields)}")
            AutoscalingConfig(**self.autoscaling_config)      # Serve's own checks, at parse time
        return self

    def serve_options(self) -> dict[str, Any]:
        """Keyword arguments for ``Deployment.options`` (unset placement fields left out;
        Serve refuses a fixed ``num_replicas`` beside an ``autoscaling_config``)."""
        exclude = {"num_replicas"} if self.autoscaling_config is not None else set()
        return self.model_dump(exclude_none=True, exclude=exclude)


class EngineConfig(_Config):
    """One engine: what model, with which engine arguments, on which resources."""

    engine: ServeEngineName = Field(
        DEFAULT_SERVE_ENGINE,
        description="Serving engine (qrhead_vllm.engines). 'sglang' (retriever only; "
                    ".venv-sglang): an SGLang Engine with the QRHead hook answers /v1/rerank "
                    "and the retrieval of /v1/answer; its OpenAI routes are not bridged (they "
                    "answer 404 unless a separate vLLM generator is configured).")
    model: str = Field("smollm2-135m", description="Bundled model name (smollm2-135m, "
                                                   "gemma3-270m), local HF directory or hub id.")
    served_model_name: list[str] | None = Field(
        None, description="Names clients may put in 'model'; default: the model id and, for a "
                          "bundled model, its short name too.")
    dtype: str = Field("auto", description="Engine dtype: auto (bfloat16 on CPUs with native "
                                           "bf16, float32 on other CPUs, the engine's choice on "
                                           "GPU: qrhead_vllm.dtypes; shown by /health), "
                                           "float32, bfloat16 or float16.")
    max_model_len: int | None = Field(
        4096, gt=0, description="Context window; the retriever scores longer inputs in windows.")
    tensor_parallel_size: int = Field(1, gt=0, description="Tensor-parallel GPUs (vLLM arg).")
    pipeline_parallel_size: int = Field(1, gt=0, description="Pipeline stages (vLLM arg).")
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="vLLM's GPU memory fraction. On CPU leave it unset: the "
                                      "engine is sized from the model, max_model_len and "
                                      "kv_cache_sequences (a fraction of the host's memory does "
                                      "not carry from one box to another).")
    kv_cache_sequences: int = Field(
        2, gt=0, description="CPU only: full-length (max_model_len) sequences the KV cache holds "
                             "at once; the engine's memory is derived from it and checked "
                             "against the NUMA node at start-up (engine_args."
                             "kv_cache_memory_bytes overrides).")
    enforce_eager: bool | None = Field(
        None, description="Disable torch.compile / CUDA graphs (the retriever defaults to True: "
                          "compile is slow and was wrong in bf16 on CPU).")
    engine_args: dict[str, Any] = Field(
        default_factory=dict, description="Any other vLLM AsyncEngineArgs field, passed as is "
                                          "(e.g. distributed_executor_backend, max_num_seqs).")
    env: dict[str, str] = Field(
        default_factory=dict, description="Environment variables set in the replica before the "
                                          "engine starts (e.g. VLLM_CPU_KVCACHE_SPACE).")
    deployment: DeploymentOptions = Field(
        default_factory=DeploymentOptions, description="Ray Serve placement and scaling.")

    def engine_overrides(self) -> dict[str, Any]:
        """Engine arguments this config sets explicitly, under the names of its ``engine``
        (None means: the engine's/our default; the registry maps the names, and drops those
        an engine has no equivalent for)."""
        named = {"dtype": resolve_dtype(self.dtype), "max_model_len": self.max_model_len,
                 "tensor_parallel_size": self.tensor_parallel_size,
                 "pipeline_parallel_size": self.pipeline_parallel_size,
                 "gpu_memory_utilization": self.gpu_memory_utilization,
                 "enforce_eager": self.enforce_eager}
        return {**engine(self.engine).engine_args(named), **self.engine_args}


class RetrieverConfig(EngineConfig):
    """The engine with the QRHead hook, and how it scores."""

    heads: str | list[tuple[int, int]] = Field(
        "default", description="Head set: 'default' (the model's shipped config), a shipped "
                               "config name, a YAML/JSON path, 'all' (every head, ICR) or an "
                               "explicit [[layer, head], ...] list.")
    calibrate: bool = Field(True, description="Subtract the null-query attention by default "
                                              "(requests can turn it off).")
    max_words: int | None = Field(None, gt=0, description="Truncate each document to N words "
                                                          "before scoring.")
    reverse_order: bool = Field(
        True, description="Put the documents in each prompt last-to-first, so the first one "
                          "given (first-stage rank 1) sits next to the query, as the reference "
                          "does; better for SmolLM2 on DL19, worse for Qwen2.5-Coder-0.5B "
                          "(docs/results/quality-levers.md).")
    max_documents: int = Field(1000, gt=0, description="Most documents one rerank request may "
                                                       "carry.")
    window_tokens: int | None = Field(
        None, gt=0, description="Token budget of one scoring window (default: max_model_len).")
    score_only: bool = Field(
        False, description="A score-only engine: it builds, loads and runs the model only up to "
                           "the deepest layer of `heads` (or `last_layer`), so the later layers "
                           "cost neither time nor memory; scores are unchanged. Needs a "
                           "separate generator (an engine that also generates keeps the full "
                           "model); requests naming a head set deeper than the cut get a 400.")
    last_layer: int | None = Field(
        None, ge=0, description="The cut of a score-only retriever (default: the deepest layer "
                                "of `heads`); set it to let requests name other head sets up to "
                                "that layer.")

    @property
    def head_spec(self) -> str | list[tuple[int, int]] | None:
        """``heads`` as QRHeadRanker takes it (None: the model's shipped default)."""
        return None if self.heads == "default" else self.heads

    @model_validator(mode="after")
    def _scorable(self) -> "RetrieverConfig":
        # Refused here, when the config is read, and again by the engine at start-up.
        if self.pipeline_parallel_size > 1:
            raise ValueError("retriever.pipeline_parallel_size must be 1: QRHead capture does "
                             "not support pipeline parallelism (use tensor_parallel_size)")
        if self.engine_args.get("kv_cache_dtype", "auto") != "auto":
            raise ValueError("retriever.engine_args.kv_cache_dtype must be 'auto': QRHead "
                             "cannot score from a quantised KV cache")
        if self.last_layer is not None and not self.score_only:
            raise ValueError("retriever.last_layer is the cut of a score-only engine: set "
                             "retriever.score_only: true with it")
        if self.score_only and not engine(self.engine).score_only:
            cutting = _engines_with(lambda e: e.score_only)
            raise ValueError(f"retriever.score_only is not available on engine {self.engine!r} "
                             f"(the layer cut is built with vLLM's pipeline-stage machinery): "
                             f"use an engine that cuts ({cutting}), or score_only: false")
        return self


class RAGConfig(_Config):
    """Retrieval-augmented answering (/v1/answer)."""

    passage_words: int = Field(100, gt=0, description="A long context is split at blank lines, "
                                                      "then into passages of at most N words.")
    top_k: int = Field(3, gt=0, description="Passages given to the generator by default.")
    rescore_candidates: int = Field(
        8, gt=0, description="When the passages needed several windows, the best N by window "
                             "score are scored again together so the cited scores come from one "
                             "prompt (0 windows of difference); must be >= top_k to take effect.")
    max_passages: int = Field(2000, gt=0, description="Most passages one request may produce.")
    max_tokens: int = Field(256, gt=0, description="Default answer length in tokens.")
    system_prompt: str = Field(
        "Answer the question using only the numbered passages. Be brief and cite passages "
        "like [1].", description="System message of the generator request.")


class HTTPConfig(_Config):
    """The HTTP front door (Ray Serve proxy) and the ingress deployment."""

    host: str = Field("127.0.0.1", description="Address the Serve proxy binds (0.0.0.0: all).")
    port: int = Field(8000, gt=0, lt=65536, description="Port of the Serve proxy.")
    route_prefix: str = Field("/", description="Route prefix of the application.")
    max_request_bytes: int = Field(
        16 * 2**20, gt=0, description="Larger request bodies get 413 before any parsing.")
    api_key_file: str | None = Field(
        None, description="File with the API keys clients must send (Authorization: Bearer "
                          "<key>), one per line, read by each ingress replica; with "
                          "QRHEAD_API_KEY, the only places keys come from (never this YAML). "
                          "No key anywhere: every route is open, which only a loopback "
                          "bind allows unless allow_unauthenticated is set.")
    allow_unauthenticated: bool = Field(
        False, description="Start on a non-loopback bind (e.g. 0.0.0.0) without any API key; "
                           "without it the app refuses to start there unless a key is "
                           "configured (`qrhead serve --allow-unauthenticated`).")
    metrics_needs_key: bool = Field(
        True, description="/metrics asks for a key too (Prometheus can send one: "
                          "authorization.credentials); false: open, like /health.")
    replica_wait_s: float = Field(
        60, gt=0, description="How long a request may wait for an engine replica to take it "
                              "(none running: restarting, its node lost; or all at "
                              "max_ongoing_requests) before a 503 with Retry-After; the work "
                              "itself is not bounded (a long generation is never cut).")
    ingress: DeploymentOptions = Field(
        default_factory=lambda: DeploymentOptions(ray_actor_options={"num_cpus": 0}),
        description="The ingress only parses and routes; it reserves no CPU by default.")

    @property
    def loopback(self) -> bool:
        """Only this machine can reach the bind address."""
        return is_loopback(self.host)

    @model_validator(mode="after")
    def _protected_bind(self) -> "HTTPConfig":
        # Checked when the config is read, so `qrhead serve`, `serve run` / `serve deploy` and
        # build_qrhead_app all refuse before anything starts. The key file itself is read (and
        # checked) by each ingress replica: on a cluster it lives on the nodes, not here.
        if self.loopback or self.allow_unauthenticated or self.api_key_file or envs.api_key():
            return self
        raise ValueError(
            f"the bind address {self.host!r} (http.host, --host) is reachable from other "
            "machines and no API key is configured, so anyone who reaches the port could use every model: set a key "
            "(QRHEAD_API_KEY, http.api_key_file or `qrhead serve --api-key-file PATH`), bind "
            "127.0.0.1, or, if an open server is meant, set http.allow_unauthenticated: true "
            "(`qrhead serve --allow-unauthenticated`)")


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and localhost; any other name or address may be reachable from
    elsewhere (0.0.0.0 and :: are every interface)."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class QRHeadServeConfig(_Config):
    """The whole application: retriever, optional separate generator, RAG, HTTP."""

    app_name: str = Field("qrhead", description="Ray Serve application name.")
    retriever: RetrieverConfig = Field(default_factory=RetrieverConfig,
                                       description="The QRHead scoring engine.")
    generator: EngineConfig | None = Field(
        None, description="A separate generator engine; null: the retriever's engine also "
                          "serves /v1/chat/completions, /v1/completions and /v1/models.")
    rag: RAGConfig = Field(default_factory=RAGConfig, description="/v1/answer settings.")
    http: HTTPConfig = Field(default_factory=HTTPConfig, description="HTTP settings.")

    @model_validator(mode="after")
    def _check(self) -> "QRHeadServeConfig":
        if self.generator is not None and not engine(self.generator.engine).generates:
            generating = _engines_with(lambda e: e.generates)
            raise ValueError(f"generator.engine must be one of {generating}: the app bridges "
                             "vLLM's OpenAI server only (SGLang engines serve the retriever "
                             "role)")
        if self.retriever.score_only and self.generator is None:
            raise ValueError("retriever.score_only needs a separate generator: the retriever's "
                             "engine would also generate, and an engine that generates keeps "
                             "the full model (set generator, or retriever.score_only: false)")
        if self.rag.rescore_candidates < self.rag.top_k:
            raise ValueError(f"rag.rescore_candidates ({self.rag.rescore_candidates}) must be "
                             f">= rag.top_k ({self.rag.top_k})")
        return self

    @property
    def shared_engine(self) -> bool:
        return self.generator is None

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> "QRHeadServeConfig":
        """A Serve config file (``applications[0].args``) or a bare mapping of these fields."""
        data = yaml.safe_load(Path(path).read_text()) or {}
        if "applications" in data:
            data = data["applications"][0].get("args") or {}
        return cls.model_validate(merge(data, overrides))


def _engines_with(feature: Callable[[EngineSpec], bool]) -> list[str]:
    """The Serve engines that have ``feature`` (named in error messages)."""
    return [n for n in SERVE_ENGINES if feature(engine(n))]


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``overrides`` wins (dotted keys like 'retriever.dtype' nest)."""
    out = dict(base)
    for key, value in overrides.items():
        if "." in key:
            head, rest = key.split(".", 1)
            value, key = {rest: value}, head
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out
