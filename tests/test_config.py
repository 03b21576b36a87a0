"""ModelConfig parsing of both config.json schemas, compared with transformers' Qwen3VLConfig.

The tied fixture is written in the Hub schema (rope_scaling + top-level rope_theta, torch_dtype)
and the untied one in the transformers 5 schema (rope_parameters, dtype).
"""

import copy
import json
from pathlib import Path

import pytest
from transformers import Qwen3VLConfig

from qwen3vl.config import ConfigError, ModelConfig, TextConfig, VisionConfig


def read_config(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "config.json").read_text())


def write_config(directory: Path, raw: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(raw, indent=2))
    return directory


def to_transformers5_schema(raw: dict) -> dict:
    """Rewrite a Hub-schema config as transformers 5 writes it."""
    converted = copy.deepcopy(raw)
    text = converted["text_config"]
    rope = text.pop("rope_scaling")
    rope["rope_theta"] = text.pop("rope_theta")
    text["rope_parameters"] = rope
    converted["dtype"] = converted.pop("torch_dtype")
    return converted


def to_hub_schema(raw: dict) -> dict:
    """Rewrite a transformers 5 config in the schema of the checkpoints published on the Hub."""
    converted = copy.deepcopy(raw)
    text = converted["text_config"]
    rope = text.pop("rope_parameters")
    text["rope_theta"] = rope.pop("rope_theta")
    text["rope_scaling"] = rope
    converted["torch_dtype"] = converted.pop("dtype")
    return converted


# ---- both schemas give the intended values ----


@pytest.mark.parametrize("name", ["tiny_tied", "tiny_untied"])
def test_config_sizes_match_config_json(request, name):
    checkpoint = request.getfixturevalue(name)
    raw = read_config(checkpoint)
    config = ModelConfig.from_dir(checkpoint)
    text_raw, vision_raw = raw["text_config"], raw["vision_config"]

    assert config.text == TextConfig(
        vocab_size=text_raw["vocab_size"],
        hidden_size=text_raw["hidden_size"],
        intermediate_size=text_raw["intermediate_size"],
        num_hidden_layers=text_raw["num_hidden_layers"],
        num_attention_heads=text_raw["num_attention_heads"],
        num_key_value_heads=text_raw["num_key_value_heads"],
        head_dim=text_raw["head_dim"],
        max_position_embeddings=text_raw["max_position_embeddings"],
        rope_theta=5_000_000.0,
        mrope_section=(6, 5, 5),
        rms_norm_eps=text_raw["rms_norm_eps"],
        hidden_act="silu",
    )
    assert config.vision == VisionConfig(
        depth=vision_raw["depth"],
        hidden_size=vision_raw["hidden_size"],
        intermediate_size=vision_raw["intermediate_size"],
        num_heads=vision_raw["num_heads"],
        out_hidden_size=vision_raw["out_hidden_size"],
        num_position_embeddings=vision_raw["num_position_embeddings"],
        deepstack_visual_indexes=(0, 2),
        patch_size=16,
        temporal_patch_size=2,
        spatial_merge_size=2,
        in_channels=3,
        hidden_act="gelu_pytorch_tanh",
    )
    assert config.vision.head_dim == 16
    assert config.vision.patch_dim == 3 * 2 * 16 * 16
    assert config.vision.merge_unit == 4
    assert config.tie_word_embeddings is raw["tie_word_embeddings"]
    assert (config.image_token_id, config.video_token_id) == (151655, 151656)
    assert (config.vision_start_token_id, config.vision_end_token_id) == (151652, 151653)


def test_config_stored_dtype_from_each_schema(tiny_tied, tiny_untied):
    assert ModelConfig.from_dir(tiny_tied).stored_dtype == "bfloat16"
    assert ModelConfig.from_dir(tiny_untied).stored_dtype == "float32"


@pytest.mark.parametrize("name", ["tiny_tied", "tiny_untied"])
def test_config_matches_hf_qwen3vlconfig(request, name):
    checkpoint = request.getfixturevalue(name)
    hf = Qwen3VLConfig.from_pretrained(checkpoint)
    config = ModelConfig.from_dir(checkpoint)
    hf_text, hf_vision = hf.text_config, hf.vision_config

    assert config.text.rope_theta == hf_text.rope_parameters["rope_theta"]
    assert list(config.text.mrope_section) == list(hf_text.rope_parameters["mrope_section"])
    assert config.text.head_dim == hf_text.head_dim
    assert config.text.num_attention_heads == hf_text.num_attention_heads
    assert config.text.num_key_value_heads == hf_text.num_key_value_heads
    assert config.text.rms_norm_eps == hf_text.rms_norm_eps
    assert config.text.vocab_size == hf_text.vocab_size
    assert list(config.vision.deepstack_visual_indexes) == list(hf_vision.deepstack_visual_indexes)
    assert config.vision.rope_theta == hf_vision.rope_parameters["rope_theta"]
    assert config.vision.num_heads == hf_vision.num_heads
    assert config.vision.num_position_embeddings == hf_vision.num_position_embeddings
    assert config.tie_word_embeddings == hf.tie_word_embeddings


def test_hub_schema_converted_parses_equal(tiny_tied, tmp_path):
    raw = read_config(tiny_tied)
    converted = write_config(tmp_path / "converted", to_transformers5_schema(raw))
    assert "rope_scaling" not in read_config(converted)["text_config"]
    assert ModelConfig.from_dir(converted) == ModelConfig.from_dir(tiny_tied)


def test_transformers5_schema_converted_parses_equal(tiny_untied, tmp_path):
    raw = read_config(tiny_untied)
    converted = write_config(tmp_path / "converted", to_hub_schema(raw))
    assert "rope_parameters" not in read_config(converted)["text_config"]
    assert ModelConfig.from_dir(converted) == ModelConfig.from_dir(tiny_untied)


def test_config_is_hashable(tiny_tied):
    # jit takes the config as a static argument, which requires a hash.
    config = ModelConfig.from_dir(tiny_tied)
    assert hash(config) == hash(ModelConfig.from_dir(tiny_tied))


# ---- errors ----


def test_missing_config_json_raises(tmp_path):
    with pytest.raises(ConfigError, match="no config.json") as error:
        ModelConfig.from_dir(tmp_path)
    assert str(tmp_path) in str(error.value)


def test_invalid_json_raises(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "qwen3_vl",')
    with pytest.raises(ConfigError, match="not valid JSON") as error:
        ModelConfig.from_dir(tmp_path)
    assert "config.json" in str(error.value)


def test_unknown_model_type_raises(tiny_tied, tmp_path):
    raw = read_config(tiny_tied)
    raw["model_type"] = "llava"
    with pytest.raises(ConfigError, match="model_type 'llava' is not supported") as error:
        ModelConfig.from_dir(write_config(tmp_path, raw))
    assert "qwen3_vl" in str(error.value)


@pytest.mark.parametrize("name", ["tiny_tied", "tiny_untied"])
def test_mrope_section_wrong_sum_raises(request, name, tmp_path):
    raw = read_config(request.getfixturevalue(name))
    rope_key = "rope_scaling" if "rope_scaling" in raw["text_config"] else "rope_parameters"
    raw["text_config"][rope_key]["mrope_section"] = [6, 5, 6]
    with pytest.raises(ConfigError, match="mrope_section") as error:
        ModelConfig.from_dir(write_config(tmp_path, raw))
    message = str(error.value)
    assert "[6, 5, 6]" in message
    assert "17" in message
    assert "head_dim 32" in message


def test_mrope_section_wrong_length_raises(tiny_untied, tmp_path):
    raw = read_config(tiny_untied)
    raw["text_config"]["rope_parameters"]["mrope_section"] = [8, 8]
    with pytest.raises(ConfigError, match="mrope_section must have 3 entries"):
        ModelConfig.from_dir(write_config(tmp_path, raw))


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("text_config", "hidden_size"),
        ("text_config", "num_hidden_layers"),
        ("text_config", "vocab_size"),
        ("vision_config", "depth"),
        ("vision_config", "out_hidden_size"),
    ],
)
def test_missing_required_key_raises(tiny_untied, tmp_path, section, key):
    raw = read_config(tiny_untied)
    del raw[section][key]
    with pytest.raises(ConfigError, match=f"required key '{key}' is missing") as error:
        ModelConfig.from_dir(write_config(tmp_path, raw))
    assert section in str(error.value)


@pytest.mark.parametrize("section", ["text_config", "vision_config"])
def test_missing_sub_config_raises(tiny_untied, tmp_path, section):
    raw = read_config(tiny_untied)
    del raw[section]
    with pytest.raises(ConfigError, match=f"required key '{section}' is missing"):
        ModelConfig.from_dir(write_config(tmp_path, raw))


def test_missing_rope_theta_raises(tiny_tied, tmp_path):
    raw = read_config(tiny_tied)
    del raw["text_config"]["rope_theta"]
    with pytest.raises(ConfigError, match="no rope_theta"):
        ModelConfig.from_dir(write_config(tmp_path, raw))


def test_deepstack_index_out_of_range_raises(tiny_untied, tmp_path):
    raw = read_config(tiny_untied)
    raw["vision_config"]["deepstack_visual_indexes"] = [0, 3]
    with pytest.raises(ConfigError, match="deepstack_visual_indexes") as error:
        ModelConfig.from_dir(write_config(tmp_path, raw))
    assert "[0, 3)" in str(error.value)


def test_non_square_position_table_raises(tiny_untied, tmp_path):
    raw = read_config(tiny_untied)
    raw["vision_config"]["num_position_embeddings"] = 250
    with pytest.raises(ConfigError, match="num_position_embeddings 250 must be a square number"):
        ModelConfig.from_dir(write_config(tmp_path, raw))
