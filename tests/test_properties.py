"""Property tests against transformers 5.25's own functions: mRoPE positions, image sizes, pixels.

Each property draws random inputs with hypothesis and compares the library with the HF function
that computes the same thing: `Qwen3VLModel.get_rope_index`, `Qwen3VLModel.compute_3d_position_ids`,
`Qwen3VLTextRotaryEmbedding`, the Qwen2-VL `smart_resize` and `Qwen2VLImageProcessorPil`.

Example counts were sized by breaking a copy of the logic and counting the examples hypothesis
passed before the first failure, with this file's fixed examples and with 8 random seeds. Each
count is at least 2 times the largest number seen for the bugs listed with it:

    property                  examples  bug found (largest number of examples passed first)
    image prompts                  200  advance by h instead of max(h, w) (40), h and w
                                        swapped (6), rope delta off by one (0)
    left-padded batches             80  a video's frames numbered on from earlier frames (16),
                                        a video as one block instead of one per frame (10)
    build_text_inputs               80  grids restarted at each row (17), visual token
                                        indices restarted at each row (16)
    video prompts                  100  the video frame bugs above (11)
    rope tables                     40  sectioned instead of interleaved frequency slots (7)
    smart_resize                  3000  HF's float operation order changed (1225), round half up
                                        instead of half to even (194), `>=` instead of `>` at
                                        aspect ratio 200 (8), floor and ceil swapped (4)
    image processor                 60  mean and std in reversed channel order (10), height and
                                        width swapped, patches out of merge-window order, resize
                                        in float instead of uint8 (4 each)
    decode positions               100  padded length used as each row's length (27),
                                        delta subtracted (12), position off by one (0)

Every property uses `derandomize=True`, so CI runs the same examples each time, and
`database=None`, so no example database is written into the repository. `deadline=None` is set
because the first call of a JAX operation on a new shape compiles it. The file took 17 to 27 s
on a 2-core machine that other test runs were sharing.
"""

from __future__ import annotations

import dataclasses
import functools
import json

import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest
import torch
import transformers
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from transformers import Qwen3VLConfig, Qwen3VLModel
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_smart_resize
from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLTextConfig
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextRotaryEmbedding

from qwen3vl.config import ModelConfig
from qwen3vl.model import build_text_inputs, decode_positions
from qwen3vl.processing import ImageProcessorConfig, preprocess_images, smart_resize
from qwen3vl.rope import IMAGE, TEXT, VIDEO, inverse_frequencies, mrope_positions, text_cos_sin
from tests.conftest import FIXTURE_BUILD

MERGE = 2
PAD_TOKEN = 151643  # <|endoftext|>, the pad token of Qwen3-VL's tokenizer
VISION_START = 151652
VISION_END = 151653
IMAGE_TOKEN = 151655
VIDEO_TOKEN = 151656

# HF's Qwen2-VL image processor defaults to CLIP's mean and std, while Qwen3-VL uses 0.5 everywhere.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PIXEL_TOLERANCE = 1e-6


def property_settings(max_examples: int):
    """Return settings for a reproducible property: fixed examples, no example database, no time limit."""
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None)


# --------------------------------------------------------------------------- HF reference


@pytest.fixture(scope="module", autouse=True)
def built_fixtures(checkpoint_dirs):
    """Build the tiny checkpoints first, because the configs below are read from tiny-tied."""
    return checkpoint_dirs


# Plain cached functions rather than pytest fixtures, so that hypothesis's failure reports do not
# print the whole model as an argument.
@functools.cache
def hf_model() -> Qwen3VLModel:
    """HF's model on the meta device, because its position functions read only the config."""
    raw = json.loads((FIXTURE_BUILD / "tiny-tied" / "config.json").read_text())
    with torch.device("meta"):
        return Qwen3VLModel(Qwen3VLConfig(**raw))


@functools.cache
def model_config() -> ModelConfig:
    return ModelConfig.from_dir(FIXTURE_BUILD / "tiny-tied")


class FilledCache:
    """Stand-in for an HF cache, because compute_3d_position_ids reads only its length."""

    def __init__(self, length: int):
        self.length = length

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length


# --------------------------------------------------------------------------- prompts


@dataclasses.dataclass
class Prompt:
    """One prompt's token ids, HF token types (0 text, 1 image, 2 video) and visual grids in patches."""

    input_ids: list[int] = dataclasses.field(default_factory=list)
    token_types: list[int] = dataclasses.field(default_factory=list)
    image_grids: list[tuple[int, int, int]] = dataclasses.field(default_factory=list)
    video_grids: list[tuple[int, int, int]] = dataclasses.field(default_factory=list)

    def add(self, ids: list[int], token_type: int) -> None:
        self.input_ids += ids
        self.token_types += [token_type] * len(ids)

    def add_visual_block(self, h: int, w: int, token: int, token_type: int) -> None:
        # Real prompts wrap every block in vision_start / vision_end, which are text tokens.
        self.add([VISION_START], TEXT)
        self.add([token] * (h * w // MERGE**2), token_type)
        self.add([VISION_END], TEXT)


text_runs = st.lists(st.integers(0, 999), min_size=1, max_size=6).map(lambda ids: ("text", ids))
# Patch counts, even so that 2 x 2 merge windows tile the grid.
patch_counts = st.integers(1, 8).map(lambda n: 2 * n)
image_blocks = st.tuples(st.just("image"), patch_counts, patch_counts)


@st.composite
def video_blocks(draw):
    """Draw a video of t frame groups, each preceded by timestamp text such as `<0.5 seconds>`."""
    t = draw(st.integers(1, 4))
    h, w = draw(patch_counts), draw(patch_counts)
    timestamps = draw(st.lists(st.lists(st.integers(0, 999), min_size=2, max_size=5), min_size=t, max_size=t))
    return ("video", t, h, w, timestamps)


@st.composite
def prompts(draw, videos: st.SearchStrategy[int] = st.just(0), need_visual: bool = False):
    """Draw a random interleaving of text runs and image blocks, with `videos` videos at random places."""
    items = draw(st.lists(st.one_of(text_runs, image_blocks), min_size=1, max_size=8))
    for _ in range(draw(videos)):
        items.insert(draw(st.integers(0, len(items))), draw(video_blocks()))
    if need_visual and all(item[0] == "text" for item in items):
        items.append(draw(image_blocks))

    prompt = Prompt()
    for item in items:
        if item[0] == "text":
            prompt.add(item[1], TEXT)
        elif item[0] == "image":
            _, h, w = item
            prompt.add_visual_block(h, w, IMAGE_TOKEN, IMAGE)
            prompt.image_grids.append((1, h, w))
        else:
            _, t, h, w, timestamps = item
            for timestamp in timestamps:
                prompt.add(timestamp, TEXT)
                prompt.add_visual_block(h, w, VIDEO_TOKEN, VIDEO)
            prompt.video_grids.append((t, h, w))
    return prompt


def grids_or_none(grids) -> np.ndarray | None:
    return np.asarray(grids, dtype=np.int64).reshape(-1, 3) if grids else None


def our_rope_index(prompt: Prompt) -> tuple[np.ndarray, int]:
    return mrope_positions(
        np.asarray(prompt.token_types), grids_or_none(prompt.image_grids), grids_or_none(prompt.video_grids), MERGE
    )


@dataclasses.dataclass
class LeftPaddedBatch:
    """Prompts padded on the left to one length, as HF batches them for generation."""

    input_ids: torch.Tensor  # (B, L)
    token_types: torch.Tensor  # (B, L)
    attention_mask: torch.Tensor  # (B, L), 0 at padding
    image_grid_thw: torch.Tensor | None  # (images of all rows, 3)
    video_grid_thw: torch.Tensor | None  # (videos of all rows, 3)
    lengths: list[int]  # unpadded length of each row


def left_pad(rows: list[Prompt]) -> LeftPaddedBatch:
    length = max(len(row.input_ids) for row in rows)
    input_ids = torch.full((len(rows), length), PAD_TOKEN, dtype=torch.long)
    token_types = torch.zeros((len(rows), length), dtype=torch.int32)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for b, row in enumerate(rows):
        start = length - len(row.input_ids)
        input_ids[b, start:] = torch.tensor(row.input_ids)
        token_types[b, start:] = torch.tensor(row.token_types)
        attention_mask[b, start:] = 1

    # HF takes the grids of all rows as one list, in row order.
    images = grids_or_none([grid for row in rows for grid in row.image_grids])
    videos = grids_or_none([grid for row in rows for grid in row.video_grids])
    return LeftPaddedBatch(
        input_ids,
        token_types,
        attention_mask,
        None if images is None else torch.from_numpy(images),
        None if videos is None else torch.from_numpy(videos),
        [len(row.input_ids) for row in rows],
    )


def hf_rope_index(batch: LeftPaddedBatch, use_mask: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Return HF's (3, B, L) position ids and (B,) rope deltas for a batch."""
    positions, deltas = hf_model().get_rope_index(
        batch.input_ids,
        batch.token_types,
        image_grid_thw=batch.image_grid_thw,
        video_grid_thw=batch.video_grid_thw,
        attention_mask=batch.attention_mask if use_mask else None,
    )
    return positions.numpy(), deltas[:, 0].numpy()


# --------------------------------------------------------------------------- mRoPE position ids


@property_settings(max_examples=200)
@given(prompt=prompts())
def test_image_prompt_positions_match_hf(prompt):
    positions, delta = our_rope_index(prompt)
    expected, expected_deltas = hf_rope_index(left_pad([prompt]), use_mask=False)
    np.testing.assert_array_equal(positions, expected[:, 0])
    assert delta == expected_deltas[0]


@property_settings(max_examples=80)
@given(rows=st.lists(prompts(videos=st.integers(0, 1)), min_size=1, max_size=4))
def test_left_padded_batch_positions_match_hf(rows):
    batch = left_pad(rows)
    expected, expected_deltas = hf_rope_index(batch)
    padded_length = expected.shape[-1]
    for b, row in enumerate(rows):
        positions, delta = our_rope_index(row)
        start = padded_length - len(row.input_ids)
        np.testing.assert_array_equal(positions, expected[:, b, start:], err_msg=f"row {b}")
        assert delta == expected_deltas[b], f"row {b}"


@property_settings(max_examples=80)
@given(rows=st.lists(prompts(), min_size=1, max_size=4))
def test_build_text_inputs_matches_hf_batch(rows):
    """Our right-padded batch must hold HF's left-padded positions and visual token order, row by row."""
    batch = left_pad(rows)
    expected, expected_deltas = hf_rope_index(batch)
    image_grids = grids_or_none([grid for row in rows for grid in row.image_grids])
    inputs = build_text_inputs(
        [(np.asarray(row.input_ids), np.asarray(row.token_types)) for row in rows], image_grids, model_config()
    )

    # HF's forward scatters the visual features, in order, into the image token positions of all rows.
    visual_count = int((batch.input_ids == IMAGE_TOKEN).sum())
    embeddings = torch.full(batch.input_ids.shape + (1,), -1, dtype=torch.long)
    features = torch.arange(visual_count)[:, None]
    image_mask, _ = hf_model().get_placeholder_mask(batch.input_ids, embeddings, image_features=features)
    expected_visual_index = embeddings.masked_scatter(image_mask, features)[..., 0].numpy()

    padded_length = expected.shape[-1]
    for b, length in enumerate(batch.lengths):
        start = padded_length - length
        np.testing.assert_array_equal(inputs.positions[:, b, :length], expected[:, b, start:], err_msg=f"row {b}")
        np.testing.assert_array_equal(inputs.visual_index[b, :length], expected_visual_index[b, start:], err_msg=f"row {b}")
        assert inputs.rope_deltas[b] == expected_deltas[b], f"row {b}"
        assert inputs.last_index[b] == length - 1


@property_settings(max_examples=100)
@given(prompt=prompts(videos=st.integers(1, 2)))
def test_video_prompt_positions_match_hf(prompt):
    positions, delta = our_rope_index(prompt)
    expected, expected_deltas = hf_rope_index(left_pad([prompt]), use_mask=False)
    np.testing.assert_array_equal(positions, expected[:, 0])
    assert delta == expected_deltas[0]


# --------------------------------------------------------------------------- rope tables


# Longer than any drawn prompt: 8 items of at most 66 tokens and a 4-frame video of at most 284.
ROPE_TABLE_LENGTH = 1024
ROPE_THETA = 5_000_000.0


@functools.cache
def hf_text_rotary(head_dim: int, section: tuple[int, int, int]) -> Qwen3VLTextRotaryEmbedding:
    config = Qwen3VLTextConfig(
        head_dim=head_dim,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA, "mrope_section": list(section),
                         "mrope_interleaved": True},
    )
    rotary = Qwen3VLTextRotaryEmbedding(config)
    # The frequencies may differ by 1 ulp (tests/test_rope.py checks that), so HF uses ours here
    # and the comparison isolates the slot layout.
    rotary.inv_freq = torch.from_numpy(inverse_frequencies(head_dim, ROPE_THETA))
    return rotary


@st.composite
def mrope_sections(draw) -> tuple[int, tuple[int, int, int]]:
    """Draw a head_dim and an mrope_section (t, h, w) whose slots add up to head_dim / 2."""
    head_dim = draw(st.sampled_from([32, 64, 128]))
    half = head_dim // 2
    h = draw(st.integers(0, half // 3))
    w = draw(st.integers(0, half // 3))
    return head_dim, (half - h - w, h, w)


@property_settings(max_examples=40)
@given(prompt=prompts(videos=st.integers(0, 1), need_visual=True), rope=mrope_sections())
def test_rope_tables_match_hf(prompt, rope):
    head_dim, section = rope
    positions, _ = our_rope_index(prompt)
    # One padded length for all prompts, because JAX compiles each operation once per shape.
    positions = np.pad(positions, ((0, 0), (0, ROPE_TABLE_LENGTH - positions.shape[1])))[:, None]
    expected_cos, expected_sin = hf_text_rotary(head_dim, section)(torch.zeros(1), torch.from_numpy(positions).long())
    cos, sin = text_cos_sin(jnp.asarray(positions), head_dim, ROPE_THETA, section, jnp.float32)
    np.testing.assert_allclose(np.asarray(cos), expected_cos.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(sin), expected_sin.numpy(), rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- smart_resize


@st.composite
def pixel_bounds(draw) -> tuple[int, int]:
    min_pixels = draw(st.integers(32 * 32, 512 * 512))
    return min_pixels, draw(st.integers(min_pixels, 4096 * 4096))


def resize_sides(factor: int) -> st.SearchStrategy[int]:
    # Uniform sides rarely land on an odd multiple of factor / 2, where round() rounds half to
    # even, so those sides are drawn on purpose.
    half_multiples = st.integers(0, 4000 // factor - 1).map(lambda k: k * factor + factor // 2)
    return st.one_of(st.integers(1, 4000), half_multiples)


@st.composite
def resize_cases(draw) -> tuple[int, int, int]:
    """Draw (height, width, factor): any sides, or sides within 2 pixels of aspect ratio 200."""
    factor = draw(st.sampled_from([28, 32]))
    if draw(st.booleans()):
        return draw(resize_sides(factor)), draw(resize_sides(factor)), factor

    short_side = draw(st.integers(1, 20))
    long_side = 200 * short_side + draw(st.integers(-2, 2))
    if draw(st.booleans()):
        return short_side, long_side, factor
    return long_side, short_side, factor


@functools.cache
def divisors_up_to(number: int, limit: int) -> list[int]:
    return [divisor for divisor in range(1, limit + 1) if number % divisor == 0]


@st.composite
def exact_scale_cases(draw) -> tuple[int, int, int, int, int]:
    """Draw (height, width, factor, min_pixels, max_pixels) with a bound that scales the height to a * factor.

    With height = u * g, width = v * g and a bound of v * (a * factor)**2 / u pixels, smart_resize's
    scale beta is exactly height / (a * factor) in exact arithmetic, so height / beta / factor is
    the integer a. Float rounding then decides on which side of a the computed value falls, and
    only HF's operation order gives HF's size.
    """
    factor = draw(st.sampled_from([28, 32]))
    target = (draw(st.integers(1, 64)) * factor) ** 2
    u = draw(st.sampled_from(divisors_up_to(target, 4000)))
    g = draw(st.integers(1, 4000 // u))
    v = draw(st.integers(1, 4000 // g))
    bound = v * target // u
    if draw(st.booleans()):
        assume(32 * 32 <= bound <= 4096 * 4096)
        min_pixels, max_pixels = draw(st.integers(32 * 32, min(bound, 512 * 512))), bound
    else:
        assume(32 * 32 <= bound <= 512 * 512)
        min_pixels, max_pixels = bound, draw(st.integers(bound, 4096 * 4096))
    return u * g, v * g, factor, min_pixels, max_pixels


@st.composite
def random_bound_cases(draw) -> tuple[int, int, int, int, int]:
    height, width, factor = draw(resize_cases())
    return (height, width, factor, *draw(pixel_bounds()))


@property_settings(max_examples=3000)
@given(case=st.one_of(random_bound_cases(), exact_scale_cases()))
def test_smart_resize_matches_hf(case):
    height, width, factor, min_pixels, max_pixels = case
    try:
        expected = hf_smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    except ValueError:
        with pytest.raises(ValueError) as raised:
            smart_resize(height, width, factor, min_pixels, max_pixels)
        assert "aspect ratio" in str(raised.value)
        assert f"{width}x{height}" in str(raised.value)
        return
    assert smart_resize(height, width, factor, min_pixels, max_pixels) == expected


# --------------------------------------------------------------------------- image processor


def noise_image(seed: int, height: int, width: int) -> PIL.Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return PIL.Image.fromarray(pixels, mode="RGB")


@property_settings(max_examples=60)
@given(
    sizes=st.lists(st.tuples(st.integers(1, 700), st.integers(1, 700)), min_size=1, max_size=3),
    seed=st.integers(0, 2**32 - 1),
    bounds=pixel_bounds(),
    patch_size=st.sampled_from([14, 16]),
    normalization=st.sampled_from([((0.5,) * 3, (0.5,) * 3), (CLIP_MEAN, CLIP_STD)]),
)
def test_image_processor_matches_hf_pil(sizes, seed, bounds, patch_size, normalization):
    images = [noise_image(seed + index, height, width) for index, (height, width) in enumerate(sizes)]
    min_pixels, max_pixels = bounds
    mean, std = normalization
    config = ImageProcessorConfig(
        patch_size=patch_size, min_pixels=min_pixels, max_pixels=max_pixels, image_mean=mean, image_std=std
    )
    hf_processor = transformers.Qwen2VLImageProcessorPil(
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
        patch_size=patch_size,
        temporal_patch_size=2,
        merge_size=MERGE,
        image_mean=list(mean),
        image_std=list(std),
    )
    try:
        expected = hf_processor(images=images, return_tensors="np")
    except ValueError:
        with pytest.raises(ValueError, match="aspect ratio"):
            preprocess_images(images, config)
        return

    pixel_values, grid_thw = preprocess_images(images, config)
    np.testing.assert_array_equal(grid_thw, expected["image_grid_thw"])
    assert pixel_values.shape == expected["pixel_values"].shape
    np.testing.assert_allclose(pixel_values, expected["pixel_values"], rtol=0, atol=PIXEL_TOLERANCE)


# --------------------------------------------------------------------------- decode positions


@property_settings(max_examples=100)
@given(
    rows=st.lists(prompts(videos=st.integers(0, 1), need_visual=True), min_size=1, max_size=4),
    steps=st.integers(1, 20),
)
def test_decode_positions_match_hf(rows, steps):
    """Every cached step's position equals HF's, with our deltas from our own prompt positions.

    HF pads on the left, so its cache length is the padded length L for every row. Its position
    for the new token is the count of real tokens before it, taken from the attention mask, plus
    the row's delta. Our cache is filled per row, so our length is the row's own prompt length.
    """
    batch = left_pad(rows)
    padded_length = batch.input_ids.shape[1]
    deltas = np.asarray([our_rope_index(row)[1] for row in rows], dtype=np.int32)
    lengths = np.asarray(batch.lengths, dtype=np.int32)

    # Prefill: with an empty cache HF computes the positions and stores the rope deltas on the model.
    model = hf_model()
    model.rope_deltas = None
    model.compute_3d_position_ids(
        input_ids=batch.input_ids,
        inputs_embeds=torch.zeros(len(rows), padded_length, 1),
        image_grid_thw=batch.image_grid_thw,
        video_grid_thw=batch.video_grid_thw,
        attention_mask=batch.attention_mask,
        cache=None,
        mm_token_type_ids=batch.token_types,
    )
    np.testing.assert_array_equal(deltas, model.rope_deltas[:, 0].numpy())

    new_token = torch.zeros((len(rows), 1), dtype=torch.long)
    for step in range(steps):
        attention_mask = torch.cat([batch.attention_mask, torch.ones((len(rows), step + 1), dtype=torch.long)], 1)
        step_inputs = dict(
            input_ids=new_token,
            inputs_embeds=torch.zeros(len(rows), 1, 1),
            image_grid_thw=batch.image_grid_thw,
            video_grid_thw=batch.video_grid_thw,
            cache=FilledCache(padded_length + step),
            mm_token_type_ids=torch.zeros_like(new_token, dtype=torch.int32),
        )
        # With a mask, HF returns positions for every token so far, and the new token's is last.
        expected = model.compute_3d_position_ids(attention_mask=attention_mask, **step_inputs)[:, :, -1:].numpy()
        expected_unmasked = model.compute_3d_position_ids(attention_mask=None, **step_inputs).numpy()

        positions = np.asarray(decode_positions(jnp.asarray(lengths + step), jnp.asarray(deltas)))
        np.testing.assert_array_equal(positions, expected, err_msg=f"step {step}")
        # Without a mask HF adds the padded length L to every row, so only unpadded rows compare.
        unpadded = lengths == padded_length
        np.testing.assert_array_equal(positions[:, unpadded], expected_unmasked[:, unpadded], err_msg=f"step {step}")
