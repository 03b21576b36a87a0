"""Qwen3-VL inference in JAX that loads HuggingFace checkpoints directly."""

__all__ = ["Qwen3VL", "Result", "Sampling"]


def __getattr__(name: str):
    """Import a public name on first use.

    Importing a submodule then loads no JAX: the HF benchmark worker imports qwen3vl.bench.
    """
    if name == "Sampling":
        from qwen3vl.generate import Sampling

        return Sampling
    if name in ("Qwen3VL", "Result"):
        from qwen3vl import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'qwen3vl' has no attribute {name!r}")
