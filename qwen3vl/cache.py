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

    Keys are stored after rotary embedding. Positions at or past a row's length hold stale
    values that attention masks out.
    """

    keys: jax.Array  # (layers, batch, capacity, kv_heads, head_dim)
    values: jax.Array  # (layers, batch, capacity, kv_heads, head_dim)
    lengths: jax.Array  # int32 (batch,): number of valid positions in each row

    @classmethod
    def create(cls, config: TextConfig, batch: int, capacity: int, dtype) -> KVCache:
        shape = (config.num_hidden_layers, batch, capacity, config.num_key_value_heads, config.head_dim)
        return cls(
            keys=jnp.zeros(shape, dtype),
            values=jnp.zeros(shape, dtype),
            lengths=jnp.zeros((batch,), jnp.int32),
        )

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]
