"""Text decoder (Qwen3): GQA with q/k RMSNorm, interleaved mRoPE, SwiGLU, DeepStack injection.

Dimension letters used in einsum strings and shape comments:

    B  batch              S  new tokens in this call       T  cache capacity
    E  hidden size        F  MLP width                     V  vocabulary
    H  query heads        G  key/value heads               R  query heads per key/value head
    K  head dim           L  decoder layers (or DeepStack levels)

One function, `forward_layers`, serves both prefill (S prompt tokens) and decoding (S = 1): the
new keys and values are written into the cache at each row's start position, and every query
attends to the cache positions at or before its own.

Weights keep HF's (out, in) matrices (see weights.py for why), so every projection contracts the
last axis of both operands, (B, S, E) x (F, E) -> (B, S, F), and heads are split from its output.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from qwen3vl import kernels
from qwen3vl.cache import KVCache, from_bits, to_bits
from qwen3vl.config import TextConfig
from qwen3vl.rope import apply_rotary


def rms_norm(x, scale, eps):
    """RMSNorm in float32; the result is cast back before the scale, as transformers does."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + eps)
    return scale * normed.astype(x.dtype)


def _write(bits_BGTK, new_BSGK, starts_B):
    """Write the bits of one layer's new keys (or values) at each row's start position."""

    def write_row(bits_GTK, new_GSK, start):
        return jax.lax.dynamic_update_slice(bits_GTK, new_GSK, (0, start, 0))

    return jax.vmap(write_row)(bits_BGTK, to_bits(new_BSGK).transpose(0, 2, 1, 3), starts_B)


def _attention(layer_params, x_BSE, cos_BSK, sin_BSK, k_bits, v_bits, starts_B, config: TextConfig):
    eps = config.rms_norm_eps
    batch, new, _ = x_BSE.shape
    heads, groups, head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim

    def heads_of(name, count):
        return kernels.project(x_BSE, layer_params[name]).reshape(batch, new, count, head_dim)

    q_BSHK = rms_norm(heads_of("q", heads), layer_params["q_norm"], eps)
    k_BSGK = rms_norm(heads_of("k", groups), layer_params["k_norm"], eps)
    v_BSGK = heads_of("v", groups)
    q_BSHK = apply_rotary(q_BSHK, cos_BSK, sin_BSK)
    k_BSGK = apply_rotary(k_BSGK, cos_BSK, sin_BSK)

    k_bits = _write(k_bits, k_BSGK, starts_B)
    v_bits = _write(v_bits, v_BSGK, starts_B)
    k_BGTK, v_BGTK = from_bits(k_bits, k_BSGK.dtype), from_bits(v_bits, v_BSGK.dtype)

    q_BSGRK = q_BSHK.reshape(batch, new, groups, heads // groups, head_dim)
    scores = jnp.einsum("BSGRK,BGTK->BGRST", q_BSGRK, k_BGTK, preferred_element_type=jnp.float32)
    scores = scores * head_dim**-0.5

    # Causal over absolute cache positions: query s of row b sits at starts[b] + s.
    query_positions_BS = starts_B[:, None] + jnp.arange(new)[None, :]
    key_positions_T = jnp.arange(k_BGTK.shape[2])
    visible_BST = key_positions_T[None, None, :] <= query_positions_BS[:, :, None]
    scores = jnp.where(visible_BST[:, None, None], scores, -jnp.inf)
    probs = jax.nn.softmax(scores, axis=-1).astype(x_BSE.dtype)

    out_BSGRK = jnp.einsum("BGRST,BGTK->BSGRK", probs, v_BGTK)
    out_BSF = out_BSGRK.reshape(batch, new, heads * head_dim)
    return kernels.project(out_BSF, layer_params["o"]), k_bits, v_bits


def _mlp(layer_params, x_BSE):
    gate_BSF = jax.nn.silu(kernels.project(x_BSE, layer_params["gate"]))
    up_BSF = kernels.project(x_BSE, layer_params["up"])
    return kernels.project(gate_BSF * up_BSF, layer_params["down"])


def forward_layers(params, x_BSE, cos_BSK, sin_BSK, cache: KVCache, starts_B, deepstack_LBSE,
                   config: TextConfig, capture: bool = False):
    """Run every decoder layer over the new tokens; returns hidden states, cache, layer outputs.

    `deepstack_LBSE` contains the DeepStack features scattered to their visual positions (zeros
    elsewhere); level i is added to the output of layer i. Pass None when decoding. The layers
    run as an unrolled Python loop over per-layer weights (see weights.py for why not a scan).
    """
    eps = config.rms_norm_eps
    levels = 0 if deepstack_LBSE is None else deepstack_LBSE.shape[0]
    keys, values, layer_outputs = [], [], []
    for layer, layer_params in enumerate(params["layers"]):
        with jax.named_scope(f"layer_{layer}"):
            attended, k_bits, v_bits = _attention(
                layer_params, rms_norm(x_BSE, layer_params["input_norm"], eps),
                cos_BSK, sin_BSK, cache.keys[layer], cache.values[layer], starts_B, config,
            )
            x_BSE = x_BSE + attended
            x_BSE = x_BSE + _mlp(layer_params, rms_norm(x_BSE, layer_params["post_attention_norm"], eps))
            if layer < levels:
                x_BSE = x_BSE + deepstack_LBSE[layer]
        keys.append(k_bits)
        values.append(v_bits)
        if capture:
            layer_outputs.append(x_BSE)
    return x_BSE, dataclasses.replace(cache, keys=tuple(keys), values=tuple(values)), layer_outputs


def logits(params, x_E, config: TextConfig):
    """Final RMSNorm and lm_head (tied to the embedding when the checkpoint has no lm_head).

    Takes hidden states of any leading shape (..., E); returns float32 logits (..., V) and the
    normalised hidden states.
    """
    normed_E = rms_norm(x_E, params["final_norm"], config.rms_norm_eps)
    head_VE = params["lm_head"] if "lm_head" in params else params["embed"]
    out_V = kernels.project(normed_E, head_VE)
    return out_V.astype(jnp.float32), normed_E
