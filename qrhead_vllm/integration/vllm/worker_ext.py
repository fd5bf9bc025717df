"""Worker extension: the methods clients reach with ``collective_rpc`` (one reply per worker).

Passed to vLLM as ``worker_extension_cls``; vLLM mixes it into its Worker class.

Transport: with the multiprocess engine core (always for ``AsyncLLM``), utility results cross a
msgpack socket that only restores *top-level* typed values; a tensor nested in our result dicts
arrives as ``[dtype, shape, <index of a lost aux buffer>]``. So rows travel as
``(dtype, shape, raw bytes)`` (exact: no float conversion) and :func:`decode_rows` rebuilds them
on the client; in-process engines hand back whatever was sent, which it accepts too.
"""

from __future__ import annotations

import torch

from qrhead_vllm.integration.vllm.capture import STORE


def encode_rows(rows: torch.Tensor) -> list:
    rows = rows.detach().to("cpu").contiguous()
    return [str(rows.dtype).removeprefix("torch."), list(rows.shape), rows.numpy().tobytes()]


def decode_rows(rows) -> torch.Tensor:
    """Inverse of :func:`encode_rows`; tensors (in-process engines) pass through."""
    if isinstance(rows, torch.Tensor):
        return rows
    dtype, shape, data = rows
    if not data:  # torch.frombuffer refuses empty buffers
        return torch.zeros(shape, dtype=getattr(torch, dtype))
    return torch.frombuffer(bytearray(data), dtype=getattr(torch, dtype)).reshape(shape)


class QRHeadWorkerExtension:
    def qrhead_pop(self, keys: list[str]) -> dict[str, dict]:
        """Take (and forget) the finished captures named by ``keys`` on this rank."""
        out = STORE.pop(list(keys))
        return {k: {**v, "rows": encode_rows(v["rows"])} for k, v in out.items()}

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
