"""End to end against HF transformers: greedy tokens and first-step logits in float32."""

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoProcessor, Qwen3VLForConditionalGeneration
from transformers.image_utils import load_image as hf_load_image

from qwen3vl import Qwen3VL, Sampling
from qwen3vl import model as qmodel
from qwen3vl.cache import KVCache
from qwen3vl.generate import bucket
from qwen3vl.processing import load_image
from tests.conftest import CHECKPOINT_NAMES, shared_photos

NEW_TOKENS = 32
LOGITS_ATOL = 1e-4
PROMPT = "Describe this image."


def _crops(photo: Path, out_dir: Path) -> list[Path]:
    """Make a wide, a tall and an RGBA variant of a photo, upscaled so that each side is real."""
    image = Image.open(photo).convert("RGB")
    wide = image.crop((0, 96, 256, 176)).resize((640, 200), Image.Resampling.BICUBIC)
    tall = image.crop((100, 0, 130, 100)).resize((90, 300), Image.Resampling.BICUBIC)
    rgba = image.convert("RGBA")
    alpha = np.full(rgba.size[::-1], 255, np.uint8)
    alpha[:, : rgba.size[0] // 2] = 96
    rgba.putalpha(Image.fromarray(alpha))
    paths = []
    for name, variant in (("wide_640x200", wide), ("tall_90x300", tall), ("rgba", rgba)):
        path = out_dir / f"{photo.stem}_{name}.png"
        variant.save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def image_cases(tmp_path_factory) -> list[Path]:
    photos = shared_photos()
    return photos + _crops(photos[0], tmp_path_factory.mktemp("crops"))


@pytest.fixture(scope="module", params=CHECKPOINT_NAMES)
def models(request, checkpoint_dirs):
    directory = checkpoint_dirs[request.param]
    hf = Qwen3VLForConditionalGeneration.from_pretrained(directory, dtype=torch.float32).eval()
    # The PIL backend resizes exactly as our preprocessing does; the default torchvision backend
    # differs by up to 2/255 per pixel, which would test the resize rather than the model.
    processor = AutoProcessor.from_pretrained(directory)
    processor.image_processor = AutoImageProcessor.from_pretrained(directory, backend="pil")
    ours = Qwen3VL.from_pretrained(directory, dtype="float32")
    return hf, processor, ours


def _hf_inputs(processor, image_path: Path | None, prompt: str):
    content = ([{"type": "image"}] if image_path else []) + [{"type": "text", "text": prompt}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    images = [hf_load_image(str(image_path))] if image_path else None
    return processor(text=[text], images=images, return_tensors="pt")


def _our_first_logits(vlm: Qwen3VL, inputs) -> np.ndarray:
    config, params = vlm.config, vlm.params
    if inputs.pixel_values is not None:
        visual, deepstack, _ = qmodel.encode_vision(params, inputs.pixel_values, inputs.image_grid_thw, config)
    else:
        visual, deepstack = qmodel.empty_visual(config, jnp.float32)
    length = bucket(len(inputs.input_ids))
    text_inputs = qmodel.build_text_inputs([(inputs.input_ids, inputs.token_types)], inputs.image_grid_thw,
                                           config, length=length)
    cache = KVCache.create(config.text, 1, length, jnp.float32)
    logits, _, _ = qmodel.prefill(params, text_inputs.input_ids, text_inputs.positions, text_inputs.visual_index,
                                  visual, deepstack, text_inputs.last_index, cache, config)
    return np.asarray(logits[0])


def _check_against_hf(models, image_path: Path | None, prompt: str = PROMPT):
    hf, processor, ours = models
    hf_inputs = _hf_inputs(processor, image_path, prompt)
    our_inputs = ours.processor(prompt, [load_image(image_path)] if image_path else [])
    np.testing.assert_array_equal(our_inputs.input_ids, hf_inputs["input_ids"][0].numpy())

    with torch.no_grad():
        hf_logits = hf(**hf_inputs).logits[0, -1].numpy()
        hf_tokens = hf.generate(**hf_inputs, do_sample=False, max_new_tokens=NEW_TOKENS)[0]
    hf_new = hf_tokens[hf_inputs["input_ids"].shape[1]:].tolist()

    logits = _our_first_logits(ours, our_inputs)
    error = float(np.abs(logits - hf_logits).max())
    assert error <= LOGITS_ATOL, f"first-step logits differ by {error:.2e} (bound {LOGITS_ATOL})"

    images = [image_path] if image_path else []
    result = ours.generate(prompt, images=images, max_new_tokens=NEW_TOKENS, sampling=Sampling())
    assert result.token_ids == hf_new
    assert result.text == processor.decode(hf_new, skip_special_tokens=True)


def test_greedy_matches_hf_on_photos(models, image_cases):
    for image_path in image_cases:
        _check_against_hf(models, image_path)


def test_greedy_matches_hf_text_only(models):
    _check_against_hf(models, None, "Write a short poem about the sea.")
