"""The Serve app under load: rerank throughput."""
