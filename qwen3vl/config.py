"""Typed, frozen model configuration parsed from a HuggingFace Qwen3-VL config.json.

Two config schemas exist in the wild and both are accepted:

* checkpoints published on the Hub (written by transformers 4.57) carry
  ``rope_scaling`` + ``rope_theta`` and ``torch_dtype``;
* transformers 5 writes ``rope_parameters`` (with ``rope_theta`` inside) and ``dtype``.

The dataclasses are frozen and hashable so that jit can take them as static arguments.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

SUPPORTED_MODEL_TYPES = ("qwen3_vl",)


class ConfigError(ValueError):
    """A config.json that this library cannot turn into a model."""


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    depth: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    out_hidden_size: int
    num_position_embeddings: int
    deepstack_visual_indexes: tuple[int, ...]
    patch_size: int = 16
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    in_channels: int = 3
    hidden_act: str = "gelu_pytorch_tanh"
    rope_theta: float = 10000.0
    layer_norm_eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Length of one flattened patch: channels x temporal x patch x patch."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    @property
    def merge_unit(self) -> int:
        """Number of patches merged into one visual token."""
        return self.spatial_merge_size**2


@dataclasses.dataclass(frozen=True)
class TextConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    rope_theta: float
    mrope_section: tuple[int, int, int]
    rms_norm_eps: float = 1e-6
    hidden_act: str = "silu"


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    text: TextConfig
    vision: VisionConfig
    tie_word_embeddings: bool
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    stored_dtype: str = "bfloat16"

    @classmethod
    def from_dir(cls, checkpoint_dir: str | Path) -> ModelConfig:
        path = Path(checkpoint_dir) / "config.json"
        if not path.is_file():
            raise ConfigError(
                f"no config.json in {checkpoint_dir}; pass the directory of a HuggingFace "
                "Qwen3-VL checkpoint (the folder that contains config.json and *.safetensors)"
            )
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ConfigError(
                f"{path} is not valid JSON: {error}; download the checkpoint's config.json again"
            ) from error
        if not isinstance(raw, dict):
            raise ConfigError(f"{path} must contain a JSON object, got a {type(raw).__name__}")
        return cls.from_hf_dict(raw, source=str(path))

    @classmethod
    def from_hf_dict(cls, raw: dict[str, Any], source: str = "config") -> ModelConfig:
        model_type = raw.get("model_type")
        if model_type is None:
            raise ConfigError(
                f"{source} has no model_type; pass a Qwen3-VL checkpoint, whose config.json "
                f"sets model_type to {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"{source}: model_type {model_type!r} is not supported; this library runs "
                f"{', '.join(SUPPORTED_MODEL_TYPES)} checkpoints (Qwen3-VL dense models, not MoE), "
                "so pass a Qwen3-VL 2B, 4B, 8B or 32B checkpoint"
            )
        text_raw = _require(raw, "text_config", source)
        vision_raw = _require(raw, "vision_config", source)
        # transformers reads only the top-level flag; a text_config copy of it is ignored there too.
        tie = raw.get("tie_word_embeddings", False)
        return cls(
            text=_parse_text(text_raw, f"{source} text_config"),
            vision=_parse_vision(vision_raw, f"{source} vision_config"),
            tie_word_embeddings=bool(tie),
            image_token_id=raw.get("image_token_id", 151655),
            video_token_id=raw.get("video_token_id", 151656),
            vision_start_token_id=raw.get("vision_start_token_id", 151652),
            vision_end_token_id=raw.get("vision_end_token_id", 151653),
            stored_dtype=_stored_dtype(raw, text_raw),
        )


def _require(raw: dict[str, Any], key: str, source: str) -> Any:
    if key not in raw:
        raise ConfigError(f"{source}: required key {key!r} is missing")
    return raw[key]


def _rope_settings(text_raw: dict[str, Any], source: str) -> tuple[float, tuple[int, int, int]]:
    """Read rope theta and the mRoPE section from either config schema."""
    rope = text_raw.get("rope_parameters") or text_raw.get("rope_scaling") or {}
    theta = rope.get("rope_theta", text_raw.get("rope_theta"))
    if theta is None:
        raise ConfigError(f"{source}: no rope_theta in rope_parameters or at the top level")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ConfigError(f"{source}: rope_type {rope_type!r} is not supported (only 'default')")
    if rope.get("mrope_interleaved") is False:
        raise ConfigError(f"{source}: mrope_interleaved false is not supported by Qwen3-VL")
    section = tuple(rope.get("mrope_section", (24, 20, 20)))
    if len(section) != 3:
        raise ConfigError(f"{source}: mrope_section must have 3 entries (t, h, w), got {section}")
    return float(theta), section


def _parse_text(text_raw: dict[str, Any], source: str) -> TextConfig:
    theta, section = _rope_settings(text_raw, source)
    heads = _require(text_raw, "num_attention_heads", source)
    hidden = _require(text_raw, "hidden_size", source)
    head_dim = text_raw.get("head_dim", 128)  # transformers' Qwen3VLTextConfig default
    if sum(section) != head_dim // 2:
        raise ConfigError(
            f"{source}: mrope_section {list(section)} sums to {sum(section)}, "
            f"but head_dim {head_dim} needs {head_dim // 2} frequency slots"
        )
    if text_raw.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"{source}: hidden_act {text_raw['hidden_act']!r} is not supported (only 'silu')")
    if text_raw.get("attention_bias", False):
        raise ConfigError(f"{source}: attention_bias true is not supported by Qwen3-VL")
    return TextConfig(
        vocab_size=_require(text_raw, "vocab_size", source),
        hidden_size=hidden,
        intermediate_size=_require(text_raw, "intermediate_size", source),
        num_hidden_layers=_require(text_raw, "num_hidden_layers", source),
        num_attention_heads=heads,
        num_key_value_heads=text_raw.get("num_key_value_heads") or heads,
        head_dim=head_dim,
        max_position_embeddings=text_raw.get("max_position_embeddings", 262144),
        rope_theta=theta,
        mrope_section=section,
        rms_norm_eps=text_raw.get("rms_norm_eps", 1e-6),
        hidden_act=text_raw.get("hidden_act", "silu"),
    )


def _parse_vision(vision_raw: dict[str, Any], source: str) -> VisionConfig:
    config = VisionConfig(
        depth=_require(vision_raw, "depth", source),
        hidden_size=_require(vision_raw, "hidden_size", source),
        intermediate_size=_require(vision_raw, "intermediate_size", source),
        num_heads=_require(vision_raw, "num_heads", source),
        out_hidden_size=_require(vision_raw, "out_hidden_size", source),
        num_position_embeddings=vision_raw.get("num_position_embeddings", 2304),
        deepstack_visual_indexes=tuple(vision_raw.get("deepstack_visual_indexes", (8, 16, 24))),
        patch_size=vision_raw.get("patch_size", 16),
        temporal_patch_size=vision_raw.get("temporal_patch_size", 2),
        spatial_merge_size=vision_raw.get("spatial_merge_size", 2),
        in_channels=vision_raw.get("in_channels", 3),
        hidden_act=vision_raw.get("hidden_act", "gelu_pytorch_tanh"),
    )
    side = round(config.num_position_embeddings**0.5)
    if side * side != config.num_position_embeddings:
        raise ConfigError(
            f"{source}: num_position_embeddings {config.num_position_embeddings} must be a square number"
        )
    if config.hidden_act not in ("gelu_pytorch_tanh", "gelu"):
        raise ConfigError(f"{source}: hidden_act {config.hidden_act!r} is not supported")
    if any(not 0 <= i < config.depth for i in config.deepstack_visual_indexes):
        raise ConfigError(
            f"{source}: deepstack_visual_indexes {list(config.deepstack_visual_indexes)} "
            f"must lie in [0, {config.depth})"
        )
    return config


def _stored_dtype(raw: dict[str, Any], text_raw: dict[str, Any]) -> str:
    for source in (raw, text_raw):
        for key in ("dtype", "torch_dtype"):
            if isinstance(source.get(key), str):
                return source[key]
    return "bfloat16"
