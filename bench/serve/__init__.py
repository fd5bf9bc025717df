"""Benches of the running Serve app: rerank throughput, load curve, faults."""
