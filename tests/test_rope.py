"""mRoPE position ids and rotary tables compared with transformers 5.25's Qwen3-VL modules."""

import functools
import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from transformers import Qwen3VLConfig, Qwen3VLModel
from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLTextConfig, Qwen3VLVisionConfig
from transformers.models.qwen3_vl.modeling_qwen3_vl import (
    Qwen3VLTextRotaryEmbedding,
    Qwen3VLVisionRotaryEmbedding,
    apply_rotary_pos_emb,
)
from transformers.vision_utils import get_vision_position_ids

from qwen3vl.rope import (
    IMAGE,
    TEXT,
    VIDEO,
    apply_rotary,
    inverse_frequencies,
    mrope_positions,
    mrope_slot_rows,
    text_cos_sin,
    vision_cos_sin,
)
from tests.conftest import FIXTURE_BUILD

MERGE = 2
# Qwen3-VL 2B/4B/8B text rotary settings.
REAL_HEAD_DIM = 128
REAL_THETA = 5_000_000.0
REAL_SECTION = (24, 20, 20)


@pytest.fixture(scope="module", autouse=True)
def built_fixtures(checkpoint_dirs):
    """Build the tiny checkpoints first, because `hf_model` reads the tied fixture's config.json."""
    return checkpoint_dirs


@functools.cache
def hf_model() -> Qwen3VLModel:
    """HF's model on the meta device: get_rope_index reads only the config, so no weights are needed."""
    raw = json.loads((FIXTURE_BUILD / "tiny-tied" / "config.json").read_text())
    with torch.device("meta"):
        return Qwen3VLModel(Qwen3VLConfig(**raw))


def hf_rope_index(token_types, image_grids=None, video_grids=None) -> tuple[np.ndarray, int]:
    types = torch.tensor([token_types], dtype=torch.int32)
    input_ids = torch.zeros_like(types, dtype=torch.long)
    images = None if image_grids is None else torch.tensor(image_grids, dtype=torch.long)
    videos = None if video_grids is None else torch.tensor(video_grids, dtype=torch.long)
    positions, deltas = hf_model().get_rope_index(input_ids, types, image_grid_thw=images, video_grid_thw=videos)
    return positions[:, 0].numpy(), int(deltas[0, 0])


def our_rope_index(token_types, image_grids=None, video_grids=None) -> tuple[np.ndarray, int]:
    images = None if image_grids is None else np.asarray(image_grids)
    videos = None if video_grids is None else np.asarray(video_grids)
    return mrope_positions(np.asarray(token_types), images, videos, MERGE)


def block_types(pieces) -> list[int]:
    """Expand ("text", n) / ("image", (t, h, w)) / ("video_frame", (h, w)) pieces into token types."""
    types = []
    for kind, value in pieces:
        if kind == "text":
            types += [TEXT] * value
        elif kind == "image":
            t, h, w = value
            types += [IMAGE] * (t * h * w // MERGE**2)
        else:
            h, w = value
            types += [VIDEO] * (h * w // MERGE**2)
    return types


# ---- mRoPE position ids ----


def test_docstring_example_known_values():
    # "a b <img 2x3> c": the merged 2 x 3 grid is 4 x 6 patches.
    types = [TEXT, TEXT] + [IMAGE] * 6 + [TEXT]
    positions, delta = our_rope_index(types, [[1, 4, 6]])
    expected = np.array([
        [0, 1, 2, 2, 2, 2, 2, 2, 5],
        [0, 1, 2, 2, 2, 3, 3, 3, 5],
        [0, 1, 2, 3, 4, 2, 3, 4, 5],
    ])
    np.testing.assert_array_equal(positions, expected)
    assert delta == -3
    assert positions.dtype == np.int32


IMAGE_CASES = {
    "text_only": ([("text", 7)], None),
    "one_image": ([("text", 3), ("image", (1, 8, 12)), ("text", 4)], [[1, 8, 12]]),
    "two_images_text_between": (
        [("text", 2), ("image", (1, 4, 6)), ("text", 3), ("image", (1, 10, 2)), ("text", 2)],
        [[1, 4, 6], [1, 10, 2]],
    ),
    "image_at_start": ([("image", (1, 6, 4)), ("text", 5)], [[1, 6, 4]]),
    "image_at_end": ([("text", 5), ("image", (1, 2, 12))], [[1, 2, 12]]),
    "image_only": ([("image", (1, 2, 2))], [[1, 2, 2]]),
    "multi_frame_image": ([("text", 1), ("image", (2, 4, 4)), ("text", 1)], [[2, 4, 4]]),
}


@pytest.mark.parametrize("case", IMAGE_CASES)
def test_mrope_positions_match_hf(case):
    pieces, grids = IMAGE_CASES[case]
    types = block_types(pieces)
    positions, delta = our_rope_index(types, grids)
    expected, expected_delta = hf_rope_index(types, grids)
    np.testing.assert_array_equal(positions, expected)
    assert delta == expected_delta


def test_video_frames_match_hf():
    # A 3-frame video is three blocks, each preceded by its own timestamp text.
    pieces = [("text", 2)]
    for _ in range(3):
        pieces += [("text", 3), ("video_frame", (4, 6))]
    pieces += [("text", 2), ("image", (1, 4, 4)), ("text", 1)]
    types = block_types(pieces)
    positions, delta = our_rope_index(types, [[1, 4, 4]], [[3, 4, 6]])
    expected, expected_delta = hf_rope_index(types, [[1, 4, 4]], [[3, 4, 6]])
    np.testing.assert_array_equal(positions, expected)
    assert delta == expected_delta


even_patches = st.integers(1, 6).map(lambda n: 2 * n)


@settings(max_examples=50, deadline=None)
@given(
    grids=st.lists(st.tuples(even_patches, even_patches), max_size=4),
    leading=st.integers(0, 5),
    between=st.lists(st.integers(1, 5), min_size=4, max_size=4),
    trailing=st.integers(0, 5),
)
def test_random_interleavings_match_hf(grids, leading, between, trailing):
    # Adjacent images need text between them, as real prompts have vision_start/end tokens.
    pieces = [("text", leading)]
    for i, (h, w) in enumerate(grids):
        if i:
            pieces.append(("text", between[i]))
        pieces.append(("image", (1, h, w)))
    pieces.append(("text", trailing))
    types = block_types(pieces)
    assume(types)
    image_grids = [[1, h, w] for h, w in grids] or None
    positions, delta = our_rope_index(types, image_grids)
    expected, expected_delta = hf_rope_index(types, image_grids)
    np.testing.assert_array_equal(positions, expected)
    assert delta == expected_delta


def test_block_size_not_matching_grid_raises():
    types = [TEXT] + [IMAGE] * 5 + [TEXT]
    with pytest.raises(ValueError, match="has 5 tokens.*needs 6"):
        our_rope_index(types, [[1, 4, 6]])


def test_more_blocks_than_grids_raises():
    types = [TEXT] + [IMAGE] * 4 + [TEXT] + [IMAGE] * 4
    with pytest.raises(ValueError, match="more visual blocks"):
        our_rope_index(types, [[1, 4, 4]])


# ---- text rotary tables ----


def hf_text_rotary(head_dim: int, theta: float, section) -> Qwen3VLTextRotaryEmbedding:
    config = Qwen3VLTextConfig(
        head_dim=head_dim,
        rope_parameters={"rope_type": "default", "rope_theta": theta, "mrope_section": list(section),
                         "mrope_interleaved": True},
    )
    return Qwen3VLTextRotaryEmbedding(config)


@pytest.mark.parametrize(("head_dim", "section"), [(REAL_HEAD_DIM, REAL_SECTION), (32, (6, 5, 5))])
def test_mrope_slot_rows_match_hf_recomposition(head_dim, section):
    """Feed HF's recomposition a frequency tensor whose row r contains the value r: it returns each slot's row."""
    rotary = hf_text_rotary(head_dim, REAL_THETA, section)
    row_values = torch.arange(3, dtype=torch.float32)[:, None, None, None].expand(3, 1, 1, head_dim // 2).clone()
    recomposed = rotary.recomposition_frequencies(row_values)[0, 0, : head_dim // 2]
    np.testing.assert_array_equal(mrope_slot_rows(head_dim, section), recomposed.numpy().astype(np.int64))


def test_mrope_slot_rows_known_values():
    rows = mrope_slot_rows(REAL_HEAD_DIM, REAL_SECTION)
    assert rows[:6].tolist() == [0, 1, 2, 0, 1, 2]
    # h stops after 3 * 20 slots and w after 3 * 20 too, so slots 60..63 are all t.
    assert rows[57:].tolist() == [0, 1, 2, 0, 0, 0, 0]
    assert np.bincount(rows).tolist() == [24, 20, 20]


@pytest.mark.parametrize(("head_dim", "theta"), [(REAL_HEAD_DIM, REAL_THETA), (32, REAL_THETA), (64, 10_000.0)])
def test_inverse_frequencies_within_one_ulp(head_dim, theta):
    """torch's float32 pow is not correctly rounded, so bit equality is out of reach, but 1 ulp is not."""
    rotary = hf_text_rotary(head_dim, theta, (head_dim // 2, 0, 0))
    np.testing.assert_array_max_ulp(inverse_frequencies(head_dim, theta), rotary.inv_freq.numpy(), maxulp=1)


@pytest.mark.parametrize(("head_dim", "section"), [(REAL_HEAD_DIM, REAL_SECTION), (32, (6, 5, 5))])
def test_text_cos_sin_match_hf(head_dim, section):
    """Compare the tables for random 3D positions, with HF using our inverse frequencies.

    A 1 ulp difference in a frequency grows with the position, so the frequencies have their own test.
    """
    rotary = hf_text_rotary(head_dim, REAL_THETA, section)
    rotary.inv_freq = torch.from_numpy(inverse_frequencies(head_dim, REAL_THETA))
    positions = np.random.default_rng(0).integers(0, 4096, size=(3, 2, 37)).astype(np.int32)
    x = torch.zeros(1, dtype=torch.float32)
    expected_cos, expected_sin = rotary(x, torch.from_numpy(positions).long())
    cos, sin = text_cos_sin(jnp.asarray(positions), head_dim, REAL_THETA, section, jnp.float32)
    assert cos.shape == (2, 37, head_dim)
    np.testing.assert_allclose(np.asarray(cos), expected_cos.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(sin), expected_sin.numpy(), rtol=0, atol=1e-6)


def test_apply_rotary_matches_hf():
    rng = np.random.default_rng(1)
    heads, seq = 4, 11
    q = rng.standard_normal((2, seq, heads, REAL_HEAD_DIM)).astype(np.float32)
    positions = rng.integers(0, 300, size=(3, 2, seq)).astype(np.int32)
    cos, sin = text_cos_sin(jnp.asarray(positions), REAL_HEAD_DIM, REAL_THETA, REAL_SECTION, jnp.float32)
    ours = apply_rotary(jnp.asarray(q), cos, sin)

    q_torch = torch.from_numpy(q).transpose(1, 2)  # HF wants (batch, heads, seq, head_dim)
    cos_torch, sin_torch = torch.from_numpy(np.array(cos)), torch.from_numpy(np.array(sin))
    expected, _ = apply_rotary_pos_emb(q_torch, q_torch, cos_torch, sin_torch)
    np.testing.assert_allclose(np.asarray(ours), expected.transpose(1, 2).numpy(), rtol=0, atol=1e-6)


# ---- vision rotary tables ----


# (hidden size, heads): the tiny fixture, Qwen3-VL 2B, Qwen3-VL 4B/8B.
VISION_SIZES = [(48, 3), (1024, 16), (1152, 16)]
VISION_GRIDS = [[[1, 4, 6]], [[1, 2, 2], [2, 6, 4], [1, 30, 2]], [[1, 64, 48]]]


@pytest.mark.parametrize(("hidden_size", "heads"), VISION_SIZES)
@pytest.mark.parametrize("grids", VISION_GRIDS)
def test_vision_cos_sin_match_hf(hidden_size, heads, grids):
    config = Qwen3VLVisionConfig(hidden_size=hidden_size, num_heads=heads)
    rotary = Qwen3VLVisionRotaryEmbedding(config)
    position_ids = get_vision_position_ids(torch.tensor(grids), MERGE)
    x = torch.zeros(1, dtype=torch.float32)
    expected_cos, expected_sin = rotary(x, position_ids)

    head_dim = hidden_size // heads
    cos, sin = vision_cos_sin(jnp.asarray(position_ids.numpy()), head_dim, 10_000.0)
    assert cos.shape == (position_ids.shape[0], head_dim)
    np.testing.assert_allclose(np.asarray(cos), expected_cos.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(sin), expected_sin.numpy(), rtol=0, atol=1e-6)
