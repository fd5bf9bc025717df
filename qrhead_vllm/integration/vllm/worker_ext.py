"""Worker extension: the methods clients reach with ``collective_rpc`` (one reply per worker).

Passed to vLLM as ``worker_extension_cls``; vLLM mixes it into its Worker class. Results are
the JSON-safe payloads of :mod:`qrhead_vllm.integration.request_spec`: with the multiprocess
engine core (always for ``AsyncLLM``) utility results cross a msgpack socket that only restores
*top-level* typed values, so a tensor nested in a reply would not survive it.
"""

from __future__ import annotations

import torch

from qrhead_vllm.integration.vllm.capture import STORE


class QRHeadWorkerExtension:
    def qrhead_pop(self, keys: list[str]) -> dict[str, dict]:
        """Take (and forget) the finished captures named by ``keys`` on this rank."""
        return STORE.pop(list(keys))

    def qrhead_peek(self, keys: list[str]) -> dict[str, dict]:
        """The decode-time rows so far of ``keys`` on this rank, left in place."""
        return STORE.peek(list(keys))

    def qrhead_stats(self) -> dict[str, int]:
        """Buffers held on this rank: in-progress accumulators and unclaimed results."""
        return STORE.stats()

    def qrhead_memory(self) -> dict[str, int]:
        """What this rank's model holds: attention layers with a KV cache, bytes of weights
        (:func:`held_weight_bytes`) and of KV cache."""
        runner = self.model_runner
        kv = sum(t.numel() * t.element_size() for t in runner.kv_caches if t is not None)
        return {"attention_layers": len(STORE.layers_of(runner)),
                "weight_bytes": held_weight_bytes(runner.get_model()), "kv_cache_bytes": kv}


def held_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the weights a loaded model holds, shared tensors (tied embeddings) once.

    On CPU vLLM moves every linear layer's weight into a pre-packed kernel buffer (oneDNN /
    SGL) and leaves an empty parameter behind, so ``parameters()`` no longer sees it; such a
    layer is counted from its partition shape instead (the packed copy has the same elements).
    """
    seen, total = set(), 0
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            if param.numel() == 0 and name == "weight" and hasattr(module,
                                                                  "output_size_per_partition"):
                total += (module.output_size_per_partition * module.input_size_per_partition
                          * param.element_size())
            else:
                total += param.numel() * param.element_size()
    return total
