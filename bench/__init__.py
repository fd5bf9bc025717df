"""Benchmarks: retrieval quality (quality.py) and, later, speed and memory."""
