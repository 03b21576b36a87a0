"""Layer-by-layer parity of qwen3vl against HuggingFace transformers, with a tolerance report."""
