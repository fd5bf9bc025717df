"""SGLang integration: the capture adapter, start-up checks, engine arguments, backends.

Everything that imports sglang lives here or in ``qrhead_vllm.patches.sglang_0_NN``; the
version-specific wrapping is in the patch module, this folder holds what is version-stable.

Where things run: the hooks act in SGLang's **scheduler process** (it owns the model runner,
the memory pools and the ``Req`` objects); a scoring request's spec travels there in
``SamplingParams.custom_params`` and its result comes back with the request's own output, in
``meta_info["qrhead"]``, so there is no pull call and nothing is kept after a request ends.
"""

from qrhead_vllm.integration.versions import EngineVersions

# The supported range is the ``sglang`` extra's specifier in pyproject.toml.
VERSIONS = EngineVersions("SGLang", ("sglang",), "sglang")
