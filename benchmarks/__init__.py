"""Benchmark helpers that need PyTorch, kept out of the qwen3vl package."""
