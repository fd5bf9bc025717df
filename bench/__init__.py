"""Benchmarks by subject (not part of the wheel): ``quality/`` (re-ranking quality against
baselines), ``speed/`` (capture overhead, memory, bf16; vLLM and SGLang), ``serve/`` (the Serve
app's throughput); ``report.py`` is their shared provenance and table code. Run a bench as
``python -m bench.<subject>.<name>`` or ``python bench/<subject>/<name>.py``."""
