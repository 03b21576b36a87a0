"""Per-patch vision geometry compared with transformers 5.25's vision_utils helpers.

HF's Qwen3-VL vision tower resamples its position table with
`get_vision_interpolation_indices_and_weights(..., mode="bilinear", align_corners=True)`, takes
rotary positions from `get_vision_position_ids` and splits attention at `get_vision_cu_seqlens`.
"""

import dataclasses

import numpy as np
import pytest
import torch
from transformers.vision_utils import (
    get_vision_cu_seqlens,
    get_vision_interpolation_indices_and_weights,
    get_vision_position_ids,
)

from qwen3vl.config import ModelConfig
from qwen3vl.vision import patch_coordinates, vision_geometry

MERGE = 2

GRIDS = {
    "minimum_2x2": [[1, 2, 2]],
    "wide_2x30": [[1, 2, 30]],
    "tall_30x2": [[1, 30, 2]],
    "two_frames": [[2, 4, 6]],
    "several_images": [[1, 4, 4], [1, 6, 2], [2, 8, 10], [1, 2, 2]],
    "equal_to_table": [[1, 16, 16]],
    "larger_than_table": [[1, 64, 90]],
    "long_thin": [[1, 100, 4]],
}


@pytest.fixture(scope="module", params=[16, 48], ids=["side16", "side48"])
def vision_config(request, checkpoint_dirs):
    """The tiny fixture's vision config, with its 16 x 16 table or the real 48 x 48 one."""
    config = ModelConfig.from_dir(checkpoint_dirs["tiny-tied"]).vision
    return dataclasses.replace(config, num_position_embeddings=request.param**2)


def side_of(config) -> int:
    return round(config.num_position_embeddings**0.5)


@pytest.mark.parametrize("grid", GRIDS)
def test_taps_and_weights_match_hf(vision_config, grid):
    grid_thw = np.asarray(GRIDS[grid])
    geometry = vision_geometry(grid_thw, vision_config)
    indices, weights = get_vision_interpolation_indices_and_weights(
        torch.from_numpy(grid_thw), side_of(vision_config), mode="bilinear", align_corners=True,
        spatial_merge_size=MERGE,
    )
    assert geometry.taps.dtype == np.int32
    assert geometry.tap_weights.dtype == np.float32
    np.testing.assert_array_equal(geometry.taps, indices.numpy())
    # Bit equality, so that a rounding difference cannot hide inside a tolerance.
    np.testing.assert_array_equal(geometry.tap_weights.view(np.uint32), weights.numpy().view(np.uint32))


@pytest.mark.parametrize("grid", GRIDS)
def test_rotary_positions_match_hf(vision_config, grid):
    grid_thw = np.asarray(GRIDS[grid])
    geometry = vision_geometry(grid_thw, vision_config)
    expected = get_vision_position_ids(torch.from_numpy(grid_thw), MERGE)
    assert geometry.rotary_positions.dtype == np.int32
    np.testing.assert_array_equal(geometry.rotary_positions, expected.numpy())


@pytest.mark.parametrize("grid", GRIDS)
def test_segments_follow_hf_frame_boundaries(vision_config, grid):
    """Patch i belongs to frame f when cu_seqlens[f] <= i < cu_seqlens[f + 1]."""
    grid_thw = np.asarray(GRIDS[grid])
    geometry = vision_geometry(grid_thw, vision_config)
    boundaries = get_vision_cu_seqlens(torch.from_numpy(grid_thw)).numpy()
    patches = np.arange(boundaries[-1])
    expected = np.searchsorted(boundaries, patches, side="right") - 1
    np.testing.assert_array_equal(geometry.segments, expected)


def test_segments_mark_each_frame(vision_config):
    geometry = vision_geometry(np.asarray([[2, 2, 4], [1, 2, 2]]), vision_config)
    np.testing.assert_array_equal(geometry.segments, [0] * 8 + [1] * 8 + [2] * 4)


def test_full_size_grid_reads_table(vision_config):
    """A grid as large as the table resamples nothing: each patch reads its own entry with weight 1."""
    side = side_of(vision_config)
    geometry = vision_geometry(np.asarray([[1, side, side]]), vision_config)
    rows, cols = geometry.rotary_positions.T
    np.testing.assert_array_equal(geometry.taps[:, 0], rows * side + cols)
    np.testing.assert_array_equal(geometry.tap_weights[:, 0], 1.0)
    np.testing.assert_array_equal(geometry.tap_weights[:, 1:], 0.0)


def test_minimum_grid_reads_table_corners(vision_config):
    """With align_corners a 2 x 2 grid samples exactly the four corners of the table."""
    side = side_of(vision_config)
    geometry = vision_geometry(np.asarray([[1, 2, 2]]), vision_config)
    last = side - 1
    np.testing.assert_array_equal(geometry.taps[:, 0], [0, last, last * side, last * side + last])
    np.testing.assert_array_equal(geometry.tap_weights[:, 0], 1.0)


def test_weights_sum_to_one(vision_config):
    geometry = vision_geometry(np.asarray(GRIDS["several_images"] + GRIDS["larger_than_table"]), vision_config)
    np.testing.assert_allclose(geometry.tap_weights.sum(axis=1), 1.0, rtol=0, atol=1e-6)


def test_patch_coordinates_docstring_example():
    rows, cols = patch_coordinates(1, 4, 4, 2)
    first_eight = list(zip(rows[:8].tolist(), cols[:8].tolist()))
    assert first_eight == [(0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (0, 3), (1, 2), (1, 3)]
    last_four = list(zip(rows[-4:].tolist(), cols[-4:].tolist()))
    assert last_four == [(2, 2), (2, 3), (3, 2), (3, 3)]


def test_patch_coordinates_repeat_per_frame():
    rows, cols = patch_coordinates(3, 2, 4, 2)
    assert len(rows) == 3 * 2 * 4
    np.testing.assert_array_equal(rows[:8], rows[8:16])
    np.testing.assert_array_equal(cols[:8], cols[16:])


@pytest.mark.parametrize("grid", [[1, 3, 4], [1, 4, 5]])
def test_grid_not_divisible_by_merge_raises(vision_config, grid):
    with pytest.raises(ValueError, match="not divisible by the merge size 2"):
        vision_geometry(np.asarray([grid]), vision_config)
