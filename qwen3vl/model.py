"""The whole model: visual tokens merged into the prompt, prefill, and one cached decoding step.

Dimension letters follow text.py and vision.py (B batch, S tokens, E hidden, M visual tokens,
L DeepStack levels, V vocabulary).

Both jitted functions live at module level and are compiled once per input shape; the cache is
donated so that XLA updates it in place.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from qwen3vl import text, vision
from qwen3vl.cache import KVCache
from qwen3vl.config import ModelConfig
from qwen3vl.rope import IMAGE, VIDEO, mrope_positions, text_cos_sin


@dataclasses.dataclass(frozen=True)
class TextInputs:
    """Host-side arrays for one prefill, padded to a common length S."""

    input_ids: np.ndarray  # int32 (B, S)
    positions: np.ndarray  # int32 (3, B, S): mRoPE position ids
    visual_index: np.ndarray  # int32 (B, S): row of the visual token table, or -1 for text
    last_index: np.ndarray  # int32 (B,): index of each row's last prompt token
    rope_deltas: np.ndarray  # int32 (B,): decode position = cache length + delta


def build_text_inputs(
    rows: list[tuple[np.ndarray, np.ndarray]],
    image_grid_thw: np.ndarray | None,
    config: ModelConfig,
    length: int | None = None,
) -> TextInputs:
    """Pad (input_ids, token_types) rows on the right to `length` and index their visual tokens.

    Visual tokens of all rows are numbered in order, matching the order in which the vision tower
    emits merged tokens for the images of those rows. For example, a row with token types
    [0, 1, 1, 0] gets visual_index [-1, 0, 1, -1].
    """
    length = length or max(len(ids) for ids, _ in rows)
    batch = len(rows)
    input_ids = np.zeros((batch, length), np.int32)
    positions = np.zeros((3, batch, length), np.int32)
    visual_index = np.full((batch, length), -1, np.int32)
    last_index = np.zeros(batch, np.int32)
    deltas = np.zeros(batch, np.int32)
    next_visual = 0
    grid_offset = 0
    for b, (ids, types) in enumerate(rows):
        if len(ids) > length:
            raise ValueError(f"prompt row {b} has {len(ids)} tokens, more than the padded length {length}")
        blocks = _count_image_blocks(types)
        grids = None if image_grid_thw is None else image_grid_thw[grid_offset:grid_offset + blocks]
        grid_offset += blocks
        row_positions, deltas[b] = mrope_positions(types, grids, None, config.vision.spatial_merge_size)
        count = len(ids)
        input_ids[b, :count] = ids
        positions[:, b, :count] = row_positions
        # Padding continues the positions so that the padded tail stays well defined.
        positions[:, b, count:] = row_positions.max() + 1 + np.arange(length - count)
        visual = (types == IMAGE) | (types == VIDEO)
        visual_index[b, :count][visual] = next_visual + np.arange(visual.sum())
        next_visual += int(visual.sum())
        last_index[b] = count - 1
    return TextInputs(input_ids, positions, visual_index, last_index, deltas)


def _count_image_blocks(types: np.ndarray) -> int:
    is_image = np.asarray(types) == IMAGE
    return int(np.sum(is_image[1:] & ~is_image[:-1]) + (is_image[0] if len(is_image) else 0))


def merge_visual(params, input_ids_BS, visual_index_BS, visual_ME, deepstack_LME):
    """Embed the tokens and put visual tokens and DeepStack features at the visual positions."""
    x_BSE = params["embed"][input_ids_BS]
    is_visual = (visual_index_BS >= 0)[..., None]
    rows = jnp.maximum(visual_index_BS, 0)
    x_BSE = jnp.where(is_visual, visual_ME[rows].astype(x_BSE.dtype), x_BSE)
    deepstack_LBSE = jnp.where(is_visual[None], deepstack_LME[:, rows].astype(x_BSE.dtype), 0)
    return x_BSE, deepstack_LBSE


@functools.partial(jax.jit, static_argnames=("config", "capture"), donate_argnames=("cache",))
def prefill(params, input_ids_BS, positions_3BS, visual_index_BS, visual_ME, deepstack_LME, last_index_B,
            cache: KVCache, config: ModelConfig, capture: bool = False):
    """Run the prompt through the decoder; returns last-token logits (B, V), cache, captures."""
    text_config = config.text
    text_params = params["text"]
    x_BSE, deepstack_LBSE = merge_visual(text_params, input_ids_BS, visual_index_BS, visual_ME, deepstack_LME)
    cos, sin = text_cos_sin(positions_3BS, text_config.head_dim, text_config.rope_theta,
                            text_config.mrope_section, x_BSE.dtype)
    starts_B = jnp.zeros(input_ids_BS.shape[0], jnp.int32)
    hidden_BSE, cache, layer_outputs = text.forward_layers(
        text_params, x_BSE, cos, sin, cache, starts_B, deepstack_LBSE, text_config, capture
    )
    last_BE = hidden_BSE[jnp.arange(hidden_BSE.shape[0]), last_index_B]
    logits_BV, _ = text.logits(text_params, last_BE, text_config)
    cache = dataclasses.replace(cache, lengths=last_index_B + 1)

    captured = {}
    if capture:
        captured["text.input_embeds"] = x_BSE
        for i in range(text_config.num_hidden_layers):
            captured[f"text.layer.{i}"] = layer_outputs[i]
        all_logits_BSV, all_normed_BSE = text.logits(text_params, hidden_BSE, text_config)
        captured["text.final_norm"] = all_normed_BSE
        captured["text.logits"] = all_logits_BSV
    return logits_BV, cache, captured


def decode_positions(lengths_B, rope_deltas_B):
    """Return the mRoPE position ids (3, B, 1) of the next token of each row.

    Tokens after the prompt are text, so all three rows share one position: the cache length
    plus the prompt's rope delta.
    """
    positions_B = lengths_B + rope_deltas_B
    return jnp.broadcast_to(positions_B[None, :, None], (3, positions_B.shape[0], 1))


@functools.partial(jax.jit, static_argnames=("config",), donate_argnames=("cache",))
def decode_step(params, tokens_B, rope_deltas_B, cache: KVCache, config: ModelConfig):
    """Feed one token per row at each row's cache length; returns logits (B, V) and the cache."""
    text_config = config.text
    text_params = params["text"]
    x_B1E = text_params["embed"][tokens_B][:, None]
    positions_3B1 = decode_positions(cache.lengths, rope_deltas_B)
    cos, sin = text_cos_sin(positions_3B1, text_config.head_dim, text_config.rope_theta,
                            text_config.mrope_section, x_B1E.dtype)
    hidden_B1E, cache, _ = text.forward_layers(
        text_params, x_B1E, cos, sin, cache, cache.lengths, None, text_config
    )
    logits_BV, _ = text.logits(text_params, hidden_B1E[:, 0], text_config)
    return logits_BV, dataclasses.replace(cache, lengths=cache.lengths + 1)


def encode_vision(params, pixel_values, image_grid_thw, config: ModelConfig, capture: bool = False):
    """Run the vision tower on the host-prepared patches of every image in the request."""
    geometry = vision.vision_geometry(image_grid_thw, config.vision)
    return vision.encode(
        params["vision"], jnp.asarray(pixel_values), jnp.asarray(geometry.taps), jnp.asarray(geometry.tap_weights),
        jnp.asarray(geometry.rotary_positions), jnp.asarray(geometry.segments), config.vision, capture,
    )


def empty_visual(config: ModelConfig, dtype):
    """Visual tables for a text-only prompt: one zero row that no token selects."""
    levels = len(config.vision.deepstack_visual_indexes)
    width = config.vision.out_hidden_size
    return jnp.zeros((1, width), dtype), jnp.zeros((levels, 1, width), dtype)
