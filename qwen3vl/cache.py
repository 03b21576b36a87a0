"""Preallocated key/value cache for the text decoder.

The cache stores the raw bits of its keys and values, as unsigned integers of the same width.
XLA's CPU backend (jaxlib 0.10.2) converts a bfloat16 array to float32 to update a slice of it,
which copies the whole cache at every decoding step. At batch 8 with 2048 positions and the 2B
shape's 28 layers, that update took 1.1 s per step, against 0.2 ms on integers, which XLA
updates in place.

NOTE: attention reads the bits back as floats with a bitcast. XLA fuses it into the consumer
where it can and copies the cache where it cannot, so at long contexts that copy may be part of
the attention cost (not profiled).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from qwen3vl.config import TextConfig

_BITS = {2: jnp.uint16, 4: jnp.uint32}


def to_bits(x):
    """Reinterpret a float array as unsigned integers of the same width."""
    return jax.lax.bitcast_convert_type(x, _BITS[x.dtype.itemsize])


def from_bits(bits, dtype):
    """Reinterpret unsigned integers as floats of `dtype`, which has the same width."""
    return jax.lax.bitcast_convert_type(bits, dtype)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """Keys and values of every decoder layer, preallocated to `capacity` positions.

    Each layer has its own arrays, so a decoding step updates and reads them in place. Keys are
    stored after rotary embedding. Positions at or past a row's length hold stale
    values that attention masks out. Read them as floats with `layer_keys` and `layer_values`.
    """

    keys: tuple[jax.Array, ...]  # bits of one (batch, kv_heads, capacity, head_dim) array per layer
    values: tuple[jax.Array, ...]  # bits of one (batch, kv_heads, capacity, head_dim) array per layer
    lengths: jax.Array  # int32 (batch,): number of valid positions in each row
    dtype: np.dtype = dataclasses.field(metadata=dict(static=True))  # the keys' and values' float type

    @classmethod
    def create(cls, config: TextConfig, batch: int, capacity: int, dtype) -> KVCache:
        dtype = np.dtype(dtype)
        shape = (batch, config.num_key_value_heads, capacity, config.head_dim)
        layers = range(config.num_hidden_layers)
        bits = _BITS[dtype.itemsize]
        return cls(
            keys=tuple(jnp.zeros(shape, bits) for _ in layers),
            values=tuple(jnp.zeros(shape, bits) for _ in layers),
            lengths=jnp.zeros((batch,), jnp.int32),
            dtype=dtype,
        )

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def layer_keys(self, layer: int) -> jax.Array:
        return from_bits(self.keys[layer], self.dtype)

    def layer_values(self, layer: int) -> jax.Array:
        return from_bits(self.values[layer], self.dtype)
