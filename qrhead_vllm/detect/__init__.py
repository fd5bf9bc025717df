"""Head detection as an offline Ray job (docs/method.md §1): find a model's query-focused
retrieval heads on labelled data and write the HeadConfig that serving loads.

Three doors, one implementation::

    qrhead detect --data d.jsonl --output configs/heads/x.yaml      # one machine
    ray job submit -- python -m qrhead_vllm.detect --data ... --output ...
    from qrhead_vllm.detect import DetectConfig, detect_heads        # Python

Ray, ranx and matplotlib are imported only when a job runs.
"""

from qrhead_vllm.detect.config import DetectConfig

__all__ = ["DetectConfig", "detect_heads", "run_detection"]


def __getattr__(name):
    # Keep `import qrhead_vllm.detect` cheap: the job machinery loads on first use.
    if name in ("detect_heads", "run_detection"):
        from qrhead_vllm.detect import api
        return getattr(api, name)
    raise AttributeError(name)
