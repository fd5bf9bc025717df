"""Worker extension: the methods clients reach with ``collective_rpc`` (one reply per worker).

Passed to vLLM as ``worker_extension_cls``; vLLM mixes it into its Worker class.
"""

from __future__ import annotations

from qrhead_vllm.integration.vllm.capture import STORE


class QRHeadWorkerExtension:
    def qrhead_pop(self, keys: list[str]) -> dict[str, dict]:
        """Take (and forget) the finished captures named by ``keys`` on this rank."""
        return STORE.pop(list(keys))

    def qrhead_stats(self) -> dict[str, int]:
        """Buffers held on this rank: in-progress accumulators and unclaimed results."""
        return STORE.stats()
