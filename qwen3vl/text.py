"""Text decoder (Qwen3): GQA with q/k RMSNorm, interleaved mRoPE, SwiGLU, DeepStack injection.

Dimension letters used in einsum strings and shape comments:

    B  batch              S  new tokens in this call       T  cache capacity
    E  hidden size        F  MLP width                     V  vocabulary
    H  query heads        G  key/value heads               R  query heads per key/value head
    K  head dim           L  decoder layers (or DeepStack levels)

One function, `forward_layers`, serves both prefill (S prompt tokens) and decoding (S = 1): the
new keys and values are written into the cache at each row's start position, and every query
attends to the cache positions at or before its own.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from qwen3vl.cache import KVCache
from qwen3vl.config import TextConfig
from qwen3vl.rope import apply_rotary


def rms_norm(x, scale, eps):
    """RMSNorm in float32; the result is cast back before the scale, as transformers does."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + eps)
    return scale * normed.astype(x.dtype)


def _write(cache_LBTGK, new_BSGK, layer, starts_B):
    """Write the new keys (or values) of one layer at each row's start position."""

    def write_row(cache_LTGK, new_SGK, start):
        return jax.lax.dynamic_update_slice(cache_LTGK, new_SGK[None], (layer, start, 0, 0))

    return jax.vmap(write_row, in_axes=(1, 0, 0), out_axes=1)(cache_LBTGK, new_BSGK, starts_B)


def _attention(layer_params, x_BSE, cos_BSK, sin_BSK, keys, values, layer, starts_B, config: TextConfig):
    eps = config.rms_norm_eps
    q_BSHK = rms_norm(jnp.einsum("BSE,EHK->BSHK", x_BSE, layer_params["q"]), layer_params["q_norm"], eps)
    k_BSGK = rms_norm(jnp.einsum("BSE,EGK->BSGK", x_BSE, layer_params["k"]), layer_params["k_norm"], eps)
    v_BSGK = jnp.einsum("BSE,EGK->BSGK", x_BSE, layer_params["v"])
    q_BSHK = apply_rotary(q_BSHK, cos_BSK, sin_BSK)
    k_BSGK = apply_rotary(k_BSGK, cos_BSK, sin_BSK)

    keys = _write(keys, k_BSGK, layer, starts_B)
    values = _write(values, v_BSGK, layer, starts_B)
    k_BTGK = jax.lax.dynamic_index_in_dim(keys, layer, keepdims=False)
    v_BTGK = jax.lax.dynamic_index_in_dim(values, layer, keepdims=False)

    batch, new, heads, head_dim = q_BSHK.shape
    groups = config.num_key_value_heads
    q_BSGRK = q_BSHK.reshape(batch, new, groups, heads // groups, head_dim)
    scores = jnp.einsum("BSGRK,BTGK->BGRST", q_BSGRK, k_BTGK, preferred_element_type=jnp.float32)
    scores = scores * head_dim**-0.5

    # Causal over absolute cache positions: query s of row b sits at starts[b] + s.
    query_positions_BS = starts_B[:, None] + jnp.arange(new)[None, :]
    key_positions_T = jnp.arange(k_BTGK.shape[1])
    visible_BST = key_positions_T[None, None, :] <= query_positions_BS[:, :, None]
    scores = jnp.where(visible_BST[:, None, None], scores, -jnp.inf)
    probs = jax.nn.softmax(scores, axis=-1).astype(x_BSE.dtype)

    out_BSGRK = jnp.einsum("BGRST,BTGK->BSGRK", probs, v_BTGK)
    out_BSHK = out_BSGRK.reshape(batch, new, heads, head_dim)
    return jnp.einsum("BSHK,HKE->BSE", out_BSHK, layer_params["o"]), keys, values


def _mlp(layer_params, x_BSE):
    gate_BSF = jax.nn.silu(x_BSE @ layer_params["gate"])
    return (gate_BSF * (x_BSE @ layer_params["up"])) @ layer_params["down"]


def forward_layers(params, x_BSE, cos_BSK, sin_BSK, cache: KVCache, starts_B, deepstack_LBSE,
                   config: TextConfig, capture: bool = False):
    """Run every decoder layer over the new tokens; returns hidden states, cache, layer outputs.

    `deepstack_LBSE` holds the DeepStack features scattered to their visual positions (zeros
    elsewhere); level i is added to the output of layer i. Pass None when decoding.
    """
    eps = config.rms_norm_eps
    levels = 0 if deepstack_LBSE is None else deepstack_LBSE.shape[0]

    def body(carry, inputs):
        x_BSE, keys, values = carry
        layer_params, layer = inputs
        attended, keys, values = _attention(
            layer_params, rms_norm(x_BSE, layer_params["input_norm"], eps),
            cos_BSK, sin_BSK, keys, values, layer, starts_B, config,
        )
        x_BSE = x_BSE + attended
        x_BSE = x_BSE + _mlp(layer_params, rms_norm(x_BSE, layer_params["post_attention_norm"], eps))
        if levels:
            level = jax.lax.dynamic_index_in_dim(deepstack_LBSE, jnp.minimum(layer, levels - 1), keepdims=False)
            x_BSE = jnp.where(layer < levels, x_BSE + level, x_BSE)
        return (x_BSE, keys, values), (x_BSE if capture else None)

    layer_ids = jnp.arange(config.num_hidden_layers)
    (x_BSE, keys, values), layer_outputs = jax.lax.scan(
        body, (x_BSE, cache.keys, cache.values), (params["layers"], layer_ids)
    )
    cache = KVCache(keys=keys, values=values, lengths=cache.lengths)
    return x_BSE, cache, layer_outputs


def logits(params, x_E, config: TextConfig):
    """Final RMSNorm and lm_head (tied to the embedding when the checkpoint has no lm_head).

    Takes hidden states of any leading shape (..., E); returns float32 logits (..., V) and the
    normalised hidden states.
    """
    normed_E = rms_norm(x_E, params["final_norm"], config.rms_norm_eps)
    if "lm_head" in params:
        out_V = normed_E @ params["lm_head"]
    else:
        out_V = jnp.einsum("...E,VE->...V", normed_E, params["embed"])
    return out_V.astype(jnp.float32), normed_E
