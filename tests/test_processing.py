"""Image preprocessing, tokenizer and chat prompts compared with transformers 5.25 (the reference).

HF's PIL image backend must match to 1e-6. Its default torchvision backend resizes differently
and must stay within 2/255 before normalisation (0.016 after it, with std 0.5).
"""

import dataclasses
import functools
import json
import logging

import jinja2
import numpy as np
import PIL.Image
import pytest
import transformers
from tests.conftest import shared_photos
from transformers.image_utils import load_image as hf_load_image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_smart_resize

from qwen3vl import processing
from qwen3vl.processing import (
    BUILTIN_CHAT_TEMPLATE,
    ChatTemplate,
    ImageProcessorConfig,
    Processor,
    StreamDecoder,
    Tokenizer,
    build_messages,
    encode_prompt,
    load_image,
    preprocess_images,
    render_chat,
    smart_resize,
)

PIL_TOLERANCE = 1e-6
# Two grey levels of 255, scaled by 1 / std = 2.
TORCHVISION_TOLERANCE = 0.016

PHOTOS = {path.stem: path for path in shared_photos()}
DERIVED_IMAGES = ("wide-640x200", "tall-90x300", "rgba-partial-alpha")
IMAGE_CASES = (*PHOTOS, *DERIVED_IMAGES)


@functools.cache
def _first_photo() -> PIL.Image.Image:
    return PIL.Image.open(next(iter(PHOTOS.values()))).convert("RGB")


@functools.cache
def make_test_image(name: str) -> PIL.Image.Image:
    """Return a shared photo by name, or a non-square / transparent image derived from the first photo."""
    if name in PHOTOS:
        return PIL.Image.open(PHOTOS[name]).convert("RGB")
    photo = _first_photo()
    width, height = photo.size
    if name == "wide-640x200":
        return photo.crop((0, height // 3, width, height // 3 + 80)).resize((640, 200), PIL.Image.Resampling.BICUBIC)
    if name == "tall-90x300":
        return photo.crop((width // 4, 0, width // 4 + 30, 100)).resize((90, 300), PIL.Image.Resampling.BICUBIC)
    if name == "rgba-partial-alpha":
        rgba = np.asarray(photo.convert("RGBA")).copy()
        # Alpha ramps from fully transparent on the left to opaque on the right.
        rgba[..., 3] = np.linspace(0, 255, width).astype(np.uint8)[None, :]
        return PIL.Image.fromarray(rgba, mode="RGBA")
    raise KeyError(name)


@pytest.fixture(scope="module")
def hf_pil_image_processor(tiny_tied):
    return transformers.AutoImageProcessor.from_pretrained(tiny_tied, backend="pil")


@pytest.fixture(scope="module")
def hf_torchvision_image_processor(tiny_tied):
    return transformers.AutoImageProcessor.from_pretrained(tiny_tied, backend="torchvision")


@pytest.fixture(scope="module")
def hf_processor(tiny_tied):
    return transformers.AutoProcessor.from_pretrained(tiny_tied)


@pytest.fixture(scope="module")
def processor(tiny_tied):
    return Processor.from_dir(tiny_tied)


def run_hf_pil(hf_image_processor, images):
    out = hf_image_processor(images=list(images), return_tensors="np")
    return out["pixel_values"], out["image_grid_thw"]


# --------------------------------------------------------------------------- image processor config


def test_config_matches_hf_processor(tiny_tied, hf_pil_image_processor):
    cfg = ImageProcessorConfig.from_dir(tiny_tied)
    hf = hf_pil_image_processor
    assert hf.backend == "pil"
    assert cfg.min_pixels == hf.size.shortest_edge
    assert cfg.max_pixels == hf.size.longest_edge
    assert cfg.patch_size == hf.patch_size
    assert cfg.temporal_patch_size == hf.temporal_patch_size
    assert cfg.merge_size == hf.merge_size
    assert cfg.image_mean == tuple(hf.image_mean)
    assert cfg.image_std == tuple(hf.image_std)
    assert cfg.rescale_factor == hf.rescale_factor


def test_config_min_max_pixels_override_size(tmp_path):
    raw = {"size": {"shortest_edge": 100, "longest_edge": 200}, "min_pixels": 3136, "max_pixels": 1003520}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(raw))
    cfg = ImageProcessorConfig.from_dir(tmp_path)
    hf = transformers.Qwen2VLImageProcessorPil(**raw)
    assert (cfg.min_pixels, cfg.max_pixels) == (3136, 1003520)
    assert (cfg.min_pixels, cfg.max_pixels) == (hf.size.shortest_edge, hf.size.longest_edge)


def test_config_absent_keys_take_defaults(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text("{}")
    assert ImageProcessorConfig.from_dir(tmp_path) == ImageProcessorConfig()


def test_config_rejects_disabled_step(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"do_rescale": False}))
    with pytest.raises(ValueError, match="do_rescale"):
        ImageProcessorConfig.from_dir(tmp_path)


def test_config_missing_file_names_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        ImageProcessorConfig.from_dir(tmp_path)


# --------------------------------------------------------------------------- smart_resize

SMART_RESIZE_SIZES = [
    (1, 1),
    (10, 10),
    (1, 199),
    (199, 1),
    (5, 1000),
    (256, 256),
    (200, 640),
    (300, 90),
    (480, 640),
    (720, 1280),
    (1080, 1920),
    (3000, 4000),
    (4096, 4096),
    (10_000, 10_000),
    (100_000, 60_000),
    (48, 9600),
    (33, 47),
    (16, 16),
]
SMART_RESIZE_BOUNDS = [(32, 65536, 16777216), (32, 3136, 200_000), (28, 3136, 1_003_520)]


@pytest.mark.parametrize("factor,min_pixels,max_pixels", SMART_RESIZE_BOUNDS)
def test_smart_resize_matches_hf(factor, min_pixels, max_pixels):
    for height, width in SMART_RESIZE_SIZES:
        expected = hf_smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
        actual = smart_resize(height, width, factor, min_pixels, max_pixels)
        assert actual == expected, f"{height}x{width}"


@pytest.mark.parametrize("height,width", [(1, 201), (201, 1), (5, 1010), (40_200, 200)])
def test_smart_resize_rejects_aspect_over_200(height, width):
    with pytest.raises(ValueError):
        hf_smart_resize(height, width, factor=32, min_pixels=65536, max_pixels=16777216)
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(height, width, 32, 65536, 16777216)


def test_smart_resize_rejects_empty_side():
    with pytest.raises(ValueError, match="positive"):
        smart_resize(0, 10, 32, 65536, 16777216)


# --------------------------------------------------------------------------- pixel values


@pytest.mark.parametrize("name", IMAGE_CASES)
def test_pixel_values_match_hf_pil(name, tiny_tied, hf_pil_image_processor):
    image = make_test_image(name)
    expected_pixels, expected_grid = run_hf_pil(hf_pil_image_processor, [image])
    pixel_values, grid = preprocess_images([image], ImageProcessorConfig.from_dir(tiny_tied))
    assert pixel_values.dtype == np.float32
    assert grid.dtype == np.int64
    assert np.array_equal(grid, expected_grid)
    assert pixel_values.shape == expected_pixels.shape
    assert np.abs(pixel_values - expected_pixels).max() <= PIL_TOLERANCE


@pytest.mark.parametrize("name", IMAGE_CASES)
def test_pixel_values_near_hf_torchvision(name, tiny_tied, hf_torchvision_image_processor, record_property):
    image = make_test_image(name)
    expected = hf_torchvision_image_processor(images=[image], return_tensors="np")
    pixel_values, grid = preprocess_images([image], ImageProcessorConfig.from_dir(tiny_tied))
    assert np.array_equal(grid, expected["image_grid_thw"])
    max_diff = float(np.abs(pixel_values - expected["pixel_values"]).max())
    record_property("max_abs_diff_vs_torchvision", max_diff)
    print(f"\n{name}: max abs difference vs HF torchvision backend = {max_diff:.6f}")
    assert max_diff <= TORCHVISION_TOLERANCE


def test_pixel_values_several_images(tiny_tied, hf_pil_image_processor):
    images = [make_test_image(name) for name in ("wide-640x200", "tall-90x300", IMAGE_CASES[0])]
    expected_pixels, expected_grid = run_hf_pil(hf_pil_image_processor, images)
    pixel_values, grid = preprocess_images(images, ImageProcessorConfig.from_dir(tiny_tied))
    assert np.array_equal(grid, expected_grid)
    assert np.abs(pixel_values - expected_pixels).max() <= PIL_TOLERANCE


def test_pixel_values_downscale_to_max_pixels(tiny_tied):
    # The fixture's bounds never shrink a small photo, so this checks the max_pixels branch.
    cfg = dataclasses.replace(ImageProcessorConfig.from_dir(tiny_tied), min_pixels=4096, max_pixels=40_000)
    hf = transformers.Qwen2VLImageProcessorPil(
        size={"shortest_edge": 4096, "longest_edge": 40_000}, patch_size=16, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    image = _first_photo().resize((700, 500), PIL.Image.Resampling.BICUBIC)
    expected_pixels, expected_grid = run_hf_pil(hf, [image])
    pixel_values, grid = preprocess_images([image], cfg)
    assert np.array_equal(grid, expected_grid)
    assert grid[0].prod() * 16 * 16 <= 40_000
    assert np.abs(pixel_values - expected_pixels).max() <= PIL_TOLERANCE


def test_patch_rows_follow_merge_windows():
    # Pixel value = column index, so each row's first value shows which patch column it came from.
    cfg = ImageProcessorConfig(patch_size=2, temporal_patch_size=2, merge_size=2)
    frames = np.broadcast_to(np.arange(8, dtype=np.float32), (2, 3, 4, 8))
    patches, grid = processing.patchify(frames, cfg)
    assert grid == (1, 2, 4)
    patch_columns = (patches[:, 0] // 2).astype(int).tolist()
    # Window 0 contains patch columns 0, 1 of rows 0 and 1, then window 1 contains columns 2, 3.
    assert patch_columns == [0, 1, 0, 1, 2, 3, 2, 3]


def test_preprocess_rejects_non_pil(tiny_tied):
    with pytest.raises(TypeError, match="images\\[0\\]"):
        preprocess_images([np.zeros((32, 32, 3), np.uint8)], ImageProcessorConfig.from_dir(tiny_tied))


def test_preprocess_rejects_extreme_aspect(tiny_tied):
    with pytest.raises(ValueError, match="aspect ratio"):
        preprocess_images([PIL.Image.new("RGB", (402, 2))], ImageProcessorConfig.from_dir(tiny_tied))


# --------------------------------------------------------------------------- image files and modes


def _write_mode_image(kind: str, directory):
    """Write a small image file of one kind with Pillow and return its path."""
    rng = np.random.default_rng(7)
    rgb = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    grey = rgb[..., 0]
    alpha = np.linspace(0, 255, 64).astype(np.uint8)[None, :].repeat(48, axis=0)
    if kind == "RGBA":
        image, suffix, options = PIL.Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), "png", {}
    elif kind == "LA":
        image, suffix, options = PIL.Image.fromarray(np.dstack([grey, alpha]), "LA"), "png", {}
    elif kind in ("P", "P-transparency"):
        image = PIL.Image.fromarray(rgb).quantize(16)
        suffix, options = "png", ({"transparency": 3} if kind == "P-transparency" else {})
    elif kind == "L":
        image, suffix, options = PIL.Image.fromarray(grey, "L"), "png", {}
    elif kind == "1":
        image, suffix, options = PIL.Image.fromarray(grey).convert("1"), "png", {}
    elif kind == "CMYK":
        image, suffix, options = PIL.Image.fromarray(rgb).convert("CMYK"), "jpg", {"quality": 95}
    elif kind == "I;16":
        # 16-bit values both below and above 255, which Pillow's conversion to RGB clips.
        deep = (np.arange(48 * 64).reshape(48, 64) * 7).astype(np.uint16)
        image, suffix, options = PIL.Image.fromarray(deep), "png", {}
    elif kind == "exif-rotated":
        exif = PIL.Image.Exif()
        exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
        image, suffix, options = PIL.Image.fromarray(rgb), "jpg", {"exif": exif, "quality": 95}
    else:
        raise KeyError(kind)
    path = directory / f"{kind.replace(';', '')}.{suffix}"
    image.save(path, **options)
    return path


MODE_KINDS = ("RGBA", "LA", "P", "P-transparency", "L", "1", "CMYK", "I;16", "exif-rotated")


@pytest.mark.parametrize("kind", MODE_KINDS)
def test_load_image_matches_hf(kind, tmp_path, tiny_tied, hf_pil_image_processor):
    path = _write_mode_image(kind, tmp_path)
    if kind == "I;16":
        assert PIL.Image.open(path).mode == "I;16"
    expected_image = hf_load_image(str(path))
    image = load_image(path)
    assert image.mode == "RGB"
    assert image.size == expected_image.size
    assert np.array_equal(np.asarray(image), np.asarray(expected_image))

    expected_pixels, expected_grid = run_hf_pil(hf_pil_image_processor, [expected_image])
    pixel_values, grid = preprocess_images([image], ImageProcessorConfig.from_dir(tiny_tied))
    assert np.array_equal(grid, expected_grid)
    assert np.abs(pixel_values - expected_pixels).max() <= PIL_TOLERANCE


def test_load_image_applies_exif_rotation(tmp_path):
    path = _write_mode_image("exif-rotated", tmp_path)
    assert PIL.Image.open(path).size == (64, 48)
    assert load_image(path).size == (48, 64)


def test_load_image_animated_uses_first_frame(tmp_path, caplog):
    path = tmp_path / "two-frames.gif"
    frames = [PIL.Image.new("RGB", (64, 48), color) for color in ("red", "blue")]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    with caplog.at_level(logging.WARNING, logger="qwen3vl.processing"):
        image = load_image(path)
    assert "first frame" in caplog.text
    assert np.array_equal(np.asarray(image), np.asarray(hf_load_image(str(path))))
    assert tuple(np.asarray(image)[0, 0]) == (255, 0, 0)


def test_load_image_missing_file(tmp_path):
    path = tmp_path / "absent.png"
    with pytest.raises(FileNotFoundError, match="absent.png"):
        load_image(path)


def test_load_image_directory(tmp_path):
    with pytest.raises(ValueError, match="not a regular file"):
        load_image(tmp_path)


def test_load_image_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is text, not a PNG")
    with pytest.raises(ValueError, match="notes.png"):
        load_image(path)


def test_load_image_truncated(tmp_path):
    full = _write_mode_image("RGBA", tmp_path)
    path = tmp_path / "truncated.png"
    path.write_bytes(full.read_bytes()[:200])
    with pytest.raises(ValueError, match="truncated.png"):
        load_image(path)


# --------------------------------------------------------------------------- prompts and token ids

PROMPT = "Describe these images in detail: 这是什么? 🐎"

PROMPT_CASES = {
    "one-image": (["wide-640x200"], None),
    "two-images-system": (["tall-90x300", IMAGE_CASES[0]], "You are a careful assistant."),
    "text-only": ([], None),
    "text-only-system": ([], "Answer in one word."),
}


def hf_messages(images, prompt, system):
    messages = []
    if system is not None:
        messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
    content = [{"type": "image", "image": image} for image in images] + [{"type": "text", "text": prompt}]
    messages.append({"role": "user", "content": content})
    return messages


@pytest.mark.parametrize("case", PROMPT_CASES)
def test_prompt_matches_hf_processor(case, processor, hf_processor):
    names, system = PROMPT_CASES[case]
    images = [make_test_image(name) for name in names]
    expected = hf_processor.apply_chat_template(
        hf_messages(images, PROMPT, system),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="np",
    )
    inputs = processor(PROMPT, images, system=system)
    assert inputs.input_ids.dtype == np.int32
    assert inputs.token_types.dtype == np.int8
    assert inputs.input_ids.tolist() == expected["input_ids"][0].tolist()
    assert inputs.token_types.tolist() == expected["mm_token_type_ids"][0].tolist()
    if images:
        assert np.array_equal(inputs.image_grid_thw, expected["image_grid_thw"])
        assert np.abs(inputs.pixel_values - expected["pixel_values"]).max() <= TORCHVISION_TOLERANCE
    else:
        assert inputs.pixel_values is None
        assert inputs.image_grid_thw is None


def test_prompt_matches_hf_text_call(processor, hf_processor):
    # HF's processor(text=..., images=...) path, which expands placeholders without a template.
    images = [make_test_image("wide-640x200"), make_test_image("rgba-partial-alpha")]
    text = processor.chat_template.render(build_messages("Compare them.", 2))
    expected = hf_processor(text=[text], images=images, return_tensors="np")
    pixel_values, grid = preprocess_images(images, processor.image_config)
    input_ids, token_types = encode_prompt(processor.tokenizer, text, grid, processor.image_config.merge_size)
    assert input_ids.tolist() == expected["input_ids"][0].tolist()
    assert token_types.tolist() == expected["mm_token_type_ids"][0].tolist()


def test_rendered_text_matches_hf(tiny_tied, hf_processor):
    messages = build_messages("What is shown?", 2, system="Be brief.")
    expected = hf_processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert render_chat(tiny_tied, messages) == expected
    assert render_chat(ChatTemplate.from_dir(tiny_tied), messages, add_generation_prompt=False) == (
        hf_processor.apply_chat_template(messages, add_generation_prompt=False, tokenize=False)
    )


def test_build_messages_layout():
    assert build_messages("hi", 2, system="sys") == [
        {"role": "system", "content": [{"type": "text", "text": "sys"}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "hi"}]},
    ]


TEMPLATE_CONVERSATIONS = [
    build_messages("Hello", 0),
    build_messages("Two pictures:", 2, system="You are helpful."),
    [
        {"role": "user", "content": "plain string content"},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "and this?"}]},
    ],
]


@pytest.mark.parametrize("index", range(len(TEMPLATE_CONVERSATIONS)))
def test_builtin_template_matches_checkpoint(index, tiny_tied, hf_processor):
    messages = TEMPLATE_CONVERSATIONS[index]
    expected = hf_processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert ChatTemplate(BUILTIN_CHAT_TEMPLATE).render(messages) == expected


def test_template_source_order(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "from tokenizer_config"}))
    assert ChatTemplate.from_dir(tmp_path).render([]) == "from tokenizer_config"
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": "from chat_template.json"}))
    assert ChatTemplate.from_dir(tmp_path).render([]) == "from chat_template.json"
    (tmp_path / "chat_template.jinja").write_text("from chat_template.jinja")
    assert ChatTemplate.from_dir(tmp_path).render([]) == "from chat_template.jinja"


def test_template_fallback_is_builtin(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    template = ChatTemplate.from_dir(tmp_path)
    assert template.source == BUILTIN_CHAT_TEMPLATE
    assert template.render(build_messages("Hi", 1)) == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Hi<|im_end|>\n<|im_start|>assistant\n"
    )


# Block tags on their own indented lines (trim_blocks, lstrip_blocks), loop controls, tojson with
# HTML characters and non-ASCII text, and special tokens as template variables.
ENVIRONMENT_TEMPLATE = """\
{% for message in messages %}
    {% if loop.index > 2 %}{% break %}{% endif %}
  <{{ message['role'] }}>{{ message['content'] | tojson }}
{% endfor %}
{{ eos_token }}|{{ pad_token }}
{% if add_generation_prompt %}
    GEN
{% endif %}
"""


def test_template_environment_matches_hf(tiny_tied, hf_processor):
    messages = [
        {"role": "system", "content": "Tags <b> & 'quotes' stay, ünïcödé too"},
        {"role": "user", "content": "second"},
        {"role": "assistant", "content": "never rendered: the loop breaks first"},
    ]
    expected = hf_processor.apply_chat_template(
        messages, chat_template=ENVIRONMENT_TEMPLATE, add_generation_prompt=True, tokenize=False
    )
    template = ChatTemplate(ENVIRONMENT_TEMPLATE, ChatTemplate.from_dir(tiny_tied).special_tokens)
    assert template.render(messages) == expected


def test_template_raise_exception():
    template = ChatTemplate("{{ raise_exception('System role not supported') }}")
    with pytest.raises(jinja2.TemplateError, match="System role not supported"):
        template.render([])


def test_encode_prompt_rejects_count_mismatch(processor):
    text = processor.chat_template.render(build_messages("two", 2))
    one_grid = np.array([[1, 4, 4]], dtype=np.int64)
    with pytest.raises(ValueError, match=r"in the prompt \(2\) differs from the number of images \(1\)"):
        encode_prompt(processor.tokenizer, text, one_grid, 2)
    with pytest.raises(ValueError, match=r"in the prompt \(1\) differs from the number of images \(0\)"):
        encode_prompt(processor.tokenizer, "<|image_pad|>", None, 2)


def test_encode_prompt_expands_per_grid(processor):
    grids = np.array([[1, 4, 6], [1, 2, 2]], dtype=np.int64)
    ids, types = encode_prompt(processor.tokenizer, "a<|image_pad|>b<|image_pad|>c", grids, 2)
    image_pad = processor.tokenizer.token_id("<|image_pad|>")
    assert (ids == image_pad).sum() == 6 + 1
    assert types.tolist() == [int(token == image_pad) for token in ids.tolist()]


# --------------------------------------------------------------------------- tokenizer and streaming

TOKENIZER_TEXTS = [
    "Hello, world! It's 2025.",
    "中文测试：你好，世界。日本語のテキスト",
    "Emoji 🐎🏇🏽👩‍👩‍👧‍👦 and flags 🇯🇵🇫🇷",
    "Rare glyphs 𓀀𓂀 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ∮ E⋅da = Q",
    "Combining: e\u0301 vs é, Å vs A\u030a",  # NFC normalisation applies here
    "<|im_start|>user\nSpecial 🐎 tokens<|im_end|>\n<|im_start|>assistant\n<think>x</think>",
    "  leading spaces\n\n\ttabs and\r\nnewlines  ",
]


@pytest.mark.parametrize("index", range(len(TOKENIZER_TEXTS)))
def test_tokenizer_matches_hf(index, processor, hf_processor):
    text = TOKENIZER_TEXTS[index]
    ids = processor.tokenizer.encode(text)
    assert ids == hf_processor.tokenizer(text)["input_ids"]
    assert processor.tokenizer.decode(ids) == hf_processor.tokenizer.decode(ids, skip_special_tokens=True)
    assert processor.tokenizer.decode(ids, skip_special_tokens=False) == hf_processor.tokenizer.decode(
        ids, skip_special_tokens=False
    )


@pytest.mark.parametrize("index", range(len(TOKENIZER_TEXTS)))
def test_stream_decoder_equals_decode(index, processor):
    tokenizer = processor.tokenizer
    ids = tokenizer.encode(TOKENIZER_TEXTS[index])
    decoder = StreamDecoder(tokenizer)
    pieces = [decoder.push(token_id) for token_id in ids]
    tail = decoder.flush()
    assert "".join(pieces) + tail == tokenizer.decode(ids)
    assert not any("\ufffd" in piece for piece in pieces)


def test_stream_decoder_delays_partial_character(processor):
    # A rare glyph is split into byte tokens, so some pushes must return nothing.
    tokenizer = processor.tokenizer
    ids = tokenizer.encode("𓀀")
    assert len(ids) > 1
    decoder = StreamDecoder(tokenizer)
    pieces = [decoder.push(token_id) for token_id in ids]
    assert pieces[:-1] == [""] * (len(ids) - 1)
    assert pieces[-1] == "𓀀"
    assert decoder.flush() == ""


def test_stream_decoder_flushes_incomplete_tail(processor):
    tokenizer = processor.tokenizer
    ids = tokenizer.encode("ok 𓀀")
    decoder = StreamDecoder(tokenizer)
    pieces = [decoder.push(token_id) for token_id in ids[:-1]]
    assert "".join(pieces) + decoder.flush() == tokenizer.decode(ids[:-1])


def test_token_id_known_and_unknown(tiny_tied):
    tokenizer = Tokenizer.from_dir(tiny_tied)
    assert tokenizer.token_id("<|im_end|>") == 151645
    assert tokenizer.token_id("<|image_pad|>") == 151655
    with pytest.raises(ValueError, match="<\\|no_such_token\\|>"):
        tokenizer.token_id("<|no_such_token|>")
