"""``build_qrhead_app(args) -> serve.Application``: the one way the app is put together.

Usable three ways::

    serve run configs/serve/cpu.yaml                      # a Serve config file (import_path + args)
    serve run qrhead_vllm.serve.builder:build_qrhead_app config=configs/serve/cpu.yaml retriever.dtype=bfloat16
    serve.run(build_qrhead_app(QRHeadServeConfig(...)))   # from Python

Topology: an ingress deployment (no engine, no CPU reserved) in front of one engine server
(the class the engine registry names for ``engine``: serve/vllm_server.py, serve/sglang_server.py)
playing both roles (``generator: null``, the CPU default), or of two engine deployments, a
retriever and a generator, each with its own resources (the cluster example).
"""

from __future__ import annotations

from typing import Any

from ray import serve

from qrhead_vllm import configs
from qrhead_vllm.engines import engine
from qrhead_vllm.serve.args import EngineConfig, QRHeadServeConfig, merge
from qrhead_vllm.serve.ingress import QRHeadIngress

DEFAULT_CONFIG = configs.path("serve", "cpu.yaml")


def load_config(args: QRHeadServeConfig | dict[str, Any] | None = None) -> QRHeadServeConfig:
    """A config object as is; a dict of fields (``config=<yaml>`` loads a file first, the
    other keys override it, dotted keys nest); None: the CPU default file."""
    if isinstance(args, QRHeadServeConfig):
        return args
    args = dict(args or {})
    path = args.pop("config", None)
    if path is None and not args and DEFAULT_CONFIG.exists():
        path = DEFAULT_CONFIG
    if path is not None:
        return QRHeadServeConfig.from_yaml(path, **args)
    return QRHeadServeConfig.model_validate(merge({}, args))


def engine_deployment(cfg: EngineConfig, name: str, roles: tuple[str, ...]
                      ) -> serve.Application:
    """The server class of ``cfg.engine`` (the engine registry) as a bound deployment."""
    server = serve.deployment(engine(cfg.engine).server_class(), name=name)
    return server.options(**cfg.deployment.serve_options()).bind(cfg, roles)


def build_qrhead_app(args: QRHeadServeConfig | dict[str, Any] | None = None
                     ) -> serve.Application:
    """The Serve application for a config (see module docstring)."""
    cfg = load_config(args)
    if cfg.shared_engine:
        retriever = generator = engine_deployment(cfg.retriever, "engine",
                                                  ("generator", "retriever"))
    else:
        retriever = engine_deployment(cfg.retriever, "retriever", ("retriever",))
        generator = engine_deployment(cfg.generator, "generator", ("generator",))
    ingress = QRHeadIngress.options(**cfg.http.ingress.serve_options())
    return ingress.bind(generator, retriever, cfg)
