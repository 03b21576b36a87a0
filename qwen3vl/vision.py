"""Vision tower: patch embed, resampled position table, 2D-rope blocks, merger, DeepStack mergers.

Dimension letters used in einsum strings and shape comments:

    N  patches (all images and frames of a request, concatenated)
    M  merged visual tokens, N / merge_unit
    D  vision hidden size          H  attention heads        K  head dim
    F  MLP width                   E  text hidden size (merger output)
    C  patch_dim = 3 * temporal_patch * patch * patch

The geometry that depends on each image's grid (interpolation taps, rotary positions, frame
segments) is index work done on the host in numpy by `vision_geometry`, so the jitted encoder
receives only arrays of static shape and compiles once per total patch count.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from qwen3vl import kernels
from qwen3vl.config import VisionConfig
from qwen3vl.rope import apply_rotary, vision_cos_sin


@dataclasses.dataclass(frozen=True)
class VisionGeometry:
    """Host-computed, per-patch index arrays for one batch of images, in processor patch order."""

    taps: np.ndarray  # int32 (N, 4): rows of the position table that bilinear resampling reads
    tap_weights: np.ndarray  # float32 (N, 4)
    rotary_positions: np.ndarray  # int32 (N, 2): (row, col) of each patch in its frame
    segments: np.ndarray  # int32 (N,): frame index; attention stays within a frame


def patch_coordinates(t: int, h: int, w: int, merge: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (row, col) of each patch of a t x h x w grid in the processor's merge-window order.

    The processor emits the merge x merge patches of each window consecutively, windows in raster
    order. For h = w = 4, merge = 2 the first eight patches are
    (0,0) (0,1) (1,0) (1,1) (0,2) (0,3) (1,2) (1,3).
    """
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    window_shape = (h // merge, merge, w // merge, merge)
    rows = rows.reshape(window_shape).transpose(0, 2, 1, 3).reshape(-1)
    cols = cols.reshape(window_shape).transpose(0, 2, 1, 3).reshape(-1)
    return np.tile(rows, t), np.tile(cols, t)


def bilinear_taps(index: np.ndarray, size: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the 2 source taps and weights that resample a `side`-long axis to `size` points.

    align_corners=True: target point i maps to source i * (side - 1) / (size - 1), so the
    end points land exactly on the first and last table entries. Computed in float32 like
    transformers so that the weights agree bit for bit.
    """
    # Same operation order as transformers: (index * (side - 1)) / (size - 1).
    source = index.astype(np.float32) * np.float32(side - 1) / np.float32(max(size - 1, 1))
    lower = np.floor(source)
    fraction = (source - lower).astype(np.float32)
    lower = lower.astype(np.int32)
    taps = np.stack([lower, np.minimum(lower + 1, side - 1)], axis=-1)
    upper_weight = np.float32(1) - np.abs(fraction - np.float32(1))
    weights = np.stack([np.float32(1) - fraction, upper_weight], axis=-1).astype(np.float32)
    return taps, weights


def vision_geometry(grid_thw: np.ndarray, config: VisionConfig) -> VisionGeometry:
    """Compute the per-patch interpolation taps, rotary positions and frame segments."""
    side = round(config.num_position_embeddings**0.5)
    merge = config.spatial_merge_size
    taps, weights, positions, segments = [], [], [], []
    frame = 0
    for t, h, w in np.asarray(grid_thw, dtype=np.int64).tolist():
        if h % merge or w % merge:
            raise ValueError(f"grid ({t}, {h}, {w}) is not divisible by the merge size {merge}")
        rows, cols = patch_coordinates(t, h, w, merge)
        row_taps, row_weights = bilinear_taps(rows, h, side)
        col_taps, col_weights = bilinear_taps(cols, w, side)
        taps.append((row_taps[:, :, None] * side + col_taps[:, None, :]).reshape(-1, 4))
        weights.append((row_weights[:, :, None] * col_weights[:, None, :]).reshape(-1, 4))
        positions.append(np.stack([rows, cols], axis=-1))
        segments.append(np.repeat(np.arange(frame, frame + t), h * w))
        frame += t
    return VisionGeometry(
        taps=np.concatenate(taps).astype(np.int32),
        tap_weights=np.concatenate(weights).astype(np.float32),
        rotary_positions=np.concatenate(positions).astype(np.int32),
        segments=np.concatenate(segments).astype(np.int32),
    )


def layer_norm(x, scale, bias, eps):
    """LayerNorm computed in float32, returned in the input dtype."""
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    normed = (x32 - mean) * jax.lax.rsqrt(var + eps)
    return (normed * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


def _gelu(x, config: VisionConfig):
    return jax.nn.gelu(x, approximate=config.hidden_act == "gelu_pytorch_tanh")


def _attention(block, x_ND, cos_NK, sin_NK, same_frame_NN, config: VisionConfig):
    patches, heads, head_dim = x_ND.shape[0], config.num_heads, config.head_dim
    qkv = kernels.project(x_ND, block["qkv"]) + block["qkv_bias"]
    qkv_N3HK = qkv.reshape(patches, 3, heads, head_dim)
    q_NHK, k_NHK, v_NHK = qkv_N3HK[:, 0], qkv_N3HK[:, 1], qkv_N3HK[:, 2]

    # Rotation in float32 for every compute dtype, as transformers does.
    q_NHK = apply_rotary(q_NHK.astype(jnp.float32), cos_NK, sin_NK).astype(x_ND.dtype)
    k_NHK = apply_rotary(k_NHK.astype(jnp.float32), cos_NK, sin_NK).astype(x_ND.dtype)

    scores = jnp.einsum("NHK,MHK->HNM", q_NHK, k_NHK) * head_dim**-0.5
    scores = jnp.where(same_frame_NN[None], scores.astype(jnp.float32), -jnp.inf)
    probs = jax.nn.softmax(scores, axis=-1).astype(x_ND.dtype)
    out_NHK = jnp.einsum("HNM,MHK->NHK", probs, v_NHK)
    return kernels.project(out_NHK.reshape(patches, heads * head_dim), block["proj"]) + block["proj_bias"]


def _block(block, x_ND, cos_NK, sin_NK, same_frame_NN, config: VisionConfig):
    eps = config.layer_norm_eps
    normed = layer_norm(x_ND, block["norm1_scale"], block["norm1_bias"], eps)
    x_ND = x_ND + _attention(block, normed, cos_NK, sin_NK, same_frame_NN, config)

    normed = layer_norm(x_ND, block["norm2_scale"], block["norm2_bias"], eps)
    hidden_NF = _gelu(kernels.project(normed, block["fc1"]) + block["fc1_bias"], config)
    return x_ND + kernels.project(hidden_NF, block["fc2"]) + block["fc2_bias"]


def merge_patches(merger, x_ND, config: VisionConfig, norm_after_merge: bool):
    """Concatenate each window's patches and project them to the text width: (N, D) -> (M, E).

    The main merger normalises each patch before concatenation; the DeepStack mergers normalise
    the concatenated window.
    """
    eps = config.layer_norm_eps
    merged_width = config.hidden_size * config.merge_unit
    if not norm_after_merge:
        x_ND = layer_norm(x_ND, merger["norm"]["scale"], merger["norm"]["bias"], eps)
    x_MW = x_ND.reshape(-1, merged_width)
    if norm_after_merge:
        x_MW = layer_norm(x_MW, merger["norm"]["scale"], merger["norm"]["bias"], eps)
    hidden = jax.nn.gelu(kernels.einsum("MW,WV->MV", x_MW, merger["fc1"]["kernel"]) + merger["fc1"]["bias"],
                         approximate=False)
    return kernels.einsum("MV,VE->ME", hidden, merger["fc2"]["kernel"]) + merger["fc2"]["bias"]


def embed_patches(params, pixel_values_NC, dtype):
    """Patch embed: the Conv3d with kernel = stride = patch size, written as one matmul."""
    patches_NC = pixel_values_NC.astype(dtype)
    return kernels.einsum("NC,CD->ND", patches_NC, params["patch_embed"]["kernel"]) + params["patch_embed"]["bias"]


def resample_position_table(params, taps_N4, tap_weights_N4):
    """Bilinearly resample the learned position table to each patch, in float32: (N, D)."""
    table = params["pos_embed"][taps_N4].astype(jnp.float32)  # (N, 4, D)
    return jnp.einsum("NTD,NT->ND", table, tap_weights_N4)


@functools.partial(jax.jit, static_argnames=("config", "capture"))
def encode(params, pixel_values_NC, taps_N4, tap_weights_N4, rotary_positions_N2, segments_N,
           config: VisionConfig, capture: bool = False):
    """Run the vision tower: returns merged tokens (M, E), DeepStack features (L, M, E), captures.

    With `capture` the third value is a dict of named intermediates for parity checks; otherwise
    it is empty, and nothing extra is computed or kept.
    """
    dtype = params["patch_embed"]["kernel"].dtype
    captured = {}
    patches_ND = embed_patches(params, pixel_values_NC, dtype)
    position_ND = resample_position_table(params, taps_N4, tap_weights_N4)
    x_ND = patches_ND + position_ND.astype(dtype)
    if capture:
        captured["vision.patch_embed"] = patches_ND
        captured["vision.pos_embed"] = position_ND
    cos_NK, sin_NK = vision_cos_sin(rotary_positions_N2, config.head_dim, config.rope_theta)
    same_frame_NN = segments_N[:, None] == segments_N[None, :]

    taps = {}  # block index -> output, for the DeepStack mergers
    for i, block in enumerate(params["blocks"]):
        with jax.named_scope(f"block_{i}"):
            x_ND = _block(block, x_ND, cos_NK, sin_NK, same_frame_NN, config)
        if i in config.deepstack_visual_indexes:
            taps[i] = x_ND
        if capture:
            captured[f"vision.block.{i}"] = x_ND

    merged_ME = merge_patches(params["merger"], x_ND, config, norm_after_merge=False)
    deepstack_LME = jax.vmap(lambda merger, x: merge_patches(merger, x, config, norm_after_merge=True))(
        params["deepstack"], jnp.stack([taps[i] for i in config.deepstack_visual_indexes])
    )
    if capture:
        captured["vision.merger"] = merged_ME
        for level in range(deepstack_LME.shape[0]):
            captured[f"vision.deepstack.{level}"] = deepstack_LME[level]
    return merged_ME, deepstack_LME, captured
