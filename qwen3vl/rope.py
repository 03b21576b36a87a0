"""Rotary position embeddings: Qwen3-VL's 3D mRoPE for the text decoder and 2D rope for vision.

Position ids are data-dependent index work, so they are built on the host in numpy; the
cos/sin tables and their application are jitted JAX.

Text positions have three rows (t, h, w). Text tokens use the same running position on all three
rows. An image block that starts at running position p, with a merged grid of H x W tokens, gives
token (row, col) the positions (t, h, w) = (p, p + row, p + col); the running position then
advances by max(H, W). Example: "a b <img 2x3> c" gives

    t: 0 1 | 2 2 2 2 2 2 | 5
    h: 0 1 | 2 2 2 3 3 3 | 5
    w: 0 1 | 2 3 4 2 3 4 | 5

and the rope delta (max position + 1 - sequence length) is 6 - 9 = -3, so the first generated
token (cache length 9) sits at position 9 + (-3) = 6 on all three rows.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

TEXT, IMAGE, VIDEO = 0, 1, 2


def mrope_positions(
    token_types: np.ndarray,
    image_grid_thw: np.ndarray | None,
    video_grid_thw: np.ndarray | None,
    spatial_merge_size: int,
) -> tuple[np.ndarray, int]:
    """Build the (3, seq) mRoPE position ids of one prompt and its rope delta.

    `token_types` marks each token as TEXT, IMAGE or VIDEO (HF's `mm_token_type_ids`). Each run of
    IMAGE tokens consumes the next row of `image_grid_thw`. Videos are split into one block per
    temporal patch (each frame group is preceded by its own timestamp text), so each VIDEO run
    consumes one frame group of the next video.
    """
    grids = {IMAGE: _grid_iterator(image_grid_thw, split_frames=False),
             VIDEO: _grid_iterator(video_grid_thw, split_frames=True)}
    pieces = []
    position = 0
    for kind, start, end in _runs(token_types):
        if kind == TEXT:
            pieces.append(np.broadcast_to(np.arange(position, position + end - start), (3, end - start)))
            position += end - start
            continue
        if kind not in grids:
            raise ValueError(f"unknown token type {kind} at position {start}; expected 0, 1 or 2")
        t, h, w = next(grids[kind], (None, None, None))
        if t is None:
            raise ValueError(f"more visual blocks in the prompt than grids given (block at token {start})")
        h, w = h // spatial_merge_size, w // spatial_merge_size
        if t * h * w != end - start:
            raise ValueError(
                f"visual block at tokens [{start}, {end}) has {end - start} tokens, "
                f"but its grid (t={t}, h={h}, w={w} after merging) needs {t * h * w}"
            )
        tt, hh, ww = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
        pieces.append(np.stack([tt, hh, ww]).reshape(3, -1) + position)
        position += max(h, w)
    if not pieces:
        raise ValueError("the prompt has no tokens")
    positions = np.concatenate(pieces, axis=1).astype(np.int32)
    delta = int(positions.max()) + 1 - positions.shape[1]
    return positions, delta


def _runs(token_types: np.ndarray):
    """Yield (type, start, end) for each maximal run of equal token types."""
    types = np.asarray(token_types)
    boundaries = np.flatnonzero(np.diff(types)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(types)]])
    for start, end in zip(starts, ends):
        yield int(types[start]), int(start), int(end)


def _grid_iterator(grid_thw: np.ndarray | None, split_frames: bool):
    for t, h, w in np.asarray(grid_thw if grid_thw is not None else np.zeros((0, 3)), dtype=np.int64):
        if split_frames:
            yield from ((1, int(h), int(w)) for _ in range(int(t)))
        else:
            yield int(t), int(h), int(w)


def inverse_frequencies(rotary_dim: int, theta: float) -> np.ndarray:
    """Return theta^(-2i/d) for i < d/2 in float32, within 1 ulp of PyTorch's float32 result.

    numpy's float32 power is up to 2 ulp away from PyTorch's, which moves a cos/sin table by
    1e-4 at position 4096. Computing the power in float64 and rounding it to float32 before the
    reciprocal agrees with PyTorch on all but a few slots.
    """
    exponents = np.arange(0, rotary_dim, 2, dtype=np.float32) / np.float32(rotary_dim)
    powers = (np.float64(theta) ** exponents.astype(np.float64)).astype(np.float32)
    return (np.float32(1.0) / powers).astype(np.float32)


def mrope_slot_rows(head_dim: int, mrope_section: tuple[int, int, int]) -> np.ndarray:
    """Map each of the head_dim/2 frequency slots to the position row (0 t, 1 h, 2 w) it reads.

    The slots are interleaved: slot j reads h when j % 3 == 1 and j < 3 * section[1], w when
    j % 3 == 2 and j < 3 * section[2], and t otherwise.
    """
    slots = np.arange(head_dim // 2)
    rows = np.zeros_like(slots)
    rows[(slots % 3 == 1) & (slots < 3 * mrope_section[1])] = 1
    rows[(slots % 3 == 2) & (slots < 3 * mrope_section[2])] = 2
    return rows


def text_cos_sin(positions, head_dim: int, theta: float, mrope_section: tuple[int, int, int], dtype):
    """Compute the mRoPE tables for positions (3, batch, seq): cos, sin of shape (batch, seq, head_dim)."""
    inv_freq = jnp.asarray(inverse_frequencies(head_dim, theta))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # (3, B, S, D/2)
    rows = mrope_slot_rows(head_dim, mrope_section)
    freqs = jnp.take_along_axis(freqs, jnp.asarray(rows)[None, None, None, :], axis=0)[0]
    freqs = jnp.concatenate([freqs, freqs], axis=-1)
    # transformers casts the tables to the activation dtype before applying them.
    return jnp.cos(freqs).astype(dtype), jnp.sin(freqs).astype(dtype)


def vision_cos_sin(patch_positions, head_dim: int, theta: float):
    """Compute the 2D rope tables for patch (row, col) positions (N, 2): cos, sin of shape (N, head_dim).

    Rows and columns share one set of head_dim/4 frequencies. The first half of the rotary
    dimensions encodes the row and the second half the column, and rotate-half pairs
    dimension i with i + head_dim/2.
    """
    inv_freq = jnp.asarray(inverse_frequencies(head_dim // 2, theta))
    freqs = patch_positions.astype(jnp.float32)[:, :, None] * inv_freq  # (N, 2, D/4)
    freqs = freqs.reshape(freqs.shape[0], -1)  # row frequencies, then column frequencies
    freqs = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(freqs), jnp.sin(freqs)


def rotate_half(x):
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rotary(x, cos, sin):
    """Rotate x (..., seq, heads, head_dim) by tables cos, sin (..., seq, head_dim)."""
    return x * cos[..., None, :] + rotate_half(x) * sin[..., None, :]
