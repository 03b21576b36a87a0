"""Qwen3-VL inference in JAX that loads HuggingFace checkpoints directly."""

from qwen3vl.generate import Sampling
from qwen3vl.inference import Qwen3VL, Result

__all__ = ["Qwen3VL", "Result", "Sampling"]
