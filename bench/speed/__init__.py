"""Speed and memory: capture overhead on vLLM and SGLang, the reference baseline, bf16."""
