"""Preallocated key/value cache for the text decoder."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from qwen3vl.config import TextConfig


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """Keys and values of every decoder layer, preallocated to `capacity` positions.

    Each layer has its own arrays, so a decoding step updates and reads them in place. Keys are
    stored after rotary embedding. Positions at or past a row's length hold stale
    values that attention masks out.
    """

    keys: tuple[jax.Array, ...]  # one (batch, capacity, kv_heads, head_dim) array per layer
    values: tuple[jax.Array, ...]  # one (batch, capacity, kv_heads, head_dim) array per layer
    lengths: jax.Array  # int32 (batch,): number of valid positions in each row

    @classmethod
    def create(cls, config: TextConfig, batch: int, capacity: int, dtype) -> KVCache:
        shape = (batch, capacity, config.num_key_value_heads, config.head_dim)
        layers = range(config.num_hidden_layers)
        return cls(
            keys=tuple(jnp.zeros(shape, dtype) for _ in layers),
            values=tuple(jnp.zeros(shape, dtype) for _ in layers),
            lengths=jnp.zeros((batch,), jnp.int32),
        )

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[1]
