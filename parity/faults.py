"""Deliberate faults in the JAX model, to prove that the parity suite catches real bugs.

Each fault swaps one library function for a subtly wrong version while it is active, and
names the stage where HF and the faulty model first disagree.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from qwen3vl import model, rope, vision


@dataclasses.dataclass(frozen=True)
class Fault:
    name: str
    description: str
    module: object
    attribute: str
    make_replacement: Callable[[Callable], Callable]  # receives the original function
    first_stage: str  # where the suite must first report a failure


def _sectioned_slots(original):
    def mrope_slot_rows(head_dim, mrope_section):
        return np.repeat(np.arange(3), mrope_section)  # t slots, then h slots, then w slots
    return mrope_slot_rows


def _without_deepstack(original):
    def merge_visual(params, input_ids, visual_index, visual, deepstack):
        embeds, deepstack_features = original(params, input_ids, visual_index, visual, deepstack)
        return embeds, jnp.zeros_like(deepstack_features)
    return merge_visual


def _half_pixel_taps(original):
    def bilinear_taps(index, size, side):
        source = np.clip((index.astype(np.float32) + 0.5) * side / size - 0.5, 0, side - 1)
        lower = np.floor(source).astype(np.int32)
        fraction = (source - lower).astype(np.float32)
        taps = np.stack([lower, np.minimum(lower + 1, side - 1)], axis=-1)
        return taps, np.stack([1 - fraction, fraction], axis=-1).astype(np.float32)
    return bilinear_taps


def _exact_gelu(original):
    def gelu(x, config):
        return jax.nn.gelu(x, approximate=False)
    return gelu


def _shifted_decode_position(original):
    def decode_step(params, tokens, rope_deltas, cache, config):
        return original(params, tokens, rope_deltas + 1, cache, config)
    return decode_step


def _raster_order(original):
    def patch_coordinates(t, h, w, merge):
        rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        return np.tile(rows.reshape(-1), t), np.tile(cols.reshape(-1), t)
    return patch_coordinates


FAULTS = {
    fault.name: fault for fault in (
        Fault("sectioned-mrope", "mRoPE frequency slots in t/h/w sections instead of interleaved",
              rope, "mrope_slot_rows", _sectioned_slots, "text.layer.0"),
        Fault("no-deepstack", "DeepStack features never added to the decoder",
              model, "merge_visual", _without_deepstack, "text.layer.0"),
        Fault("align-corners-false", "position table resampled with align_corners=False",
              vision, "bilinear_taps", _half_pixel_taps, "vision.pos_embed"),
        Fault("exact-gelu", "exact instead of tanh GELU in the vision MLP",
              vision, "_gelu", _exact_gelu, "vision.block.0"),
        Fault("rope-delta-off-by-one", "decode position = cache length + rope delta + 1",
              model, "decode_step", _shifted_decode_position, "decode.1.logits"),
        Fault("raster-patch-order", "patches in raster order instead of merge-window order",
              vision, "patch_coordinates", _raster_order, "vision.pos_embed"),
    )
}


@contextlib.contextmanager
def injected(name: str):
    """Activate one fault; jit caches are cleared on entry and exit so traces pick it up."""
    fault = FAULTS[name]
    original = getattr(fault.module, fault.attribute)
    setattr(fault.module, fault.attribute, fault.make_replacement(original))
    jax.clear_caches()
    try:
        yield fault
    finally:
        setattr(fault.module, fault.attribute, original)
        jax.clear_caches()
