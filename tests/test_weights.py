"""Checkpoint loading compared with transformers' state dict, and the loader's errors.

The expected layouts are written here from HF's conventions, not taken from `declare_params`.
HF stores linear weights as (out, in). A head-split projection keeps head h in rows
h*head_dim:(h+1)*head_dim, and the vision qkv rows are q, k, v in that order.
"""

import functools
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from transformers import Qwen3VLForConditionalGeneration

from qwen3vl.config import ModelConfig
from qwen3vl.weights import CheckpointError, load_params

CHECKPOINTS = ["tiny_tied", "tiny_untied"]


@functools.cache
def hf_state_dict(checkpoint: Path, dtype: torch.dtype) -> dict[str, np.ndarray]:
    model = Qwen3VLForConditionalGeneration.from_pretrained(checkpoint, dtype=dtype)
    if dtype == torch.bfloat16:
        # numpy has no bfloat16, so keep the raw bits and reinterpret them as ml_dtypes.bfloat16.
        return {k: v.view(torch.uint16).numpy().view(ml_dtypes.bfloat16) for k, v in model.state_dict().items()}
    return {k: v.numpy() for k, v in model.state_dict().items()}


@functools.cache
def our_params(checkpoint: Path, dtype: str) -> dict:
    return load_params(checkpoint, ModelConfig.from_dir(checkpoint), dtype=dtype)


def identity(x: np.ndarray) -> np.ndarray:
    return x


def transpose(x: np.ndarray) -> np.ndarray:
    return x.T


def expected_layouts(config: ModelConfig, layer: int, block: int) -> list[tuple[tuple, str, Callable]]:
    """(our path, HF name, HF -> our layout) for a spread of parameters, one text layer and one block."""
    v, t = config.vision, config.text
    vis = f"model.visual.blocks.{block}"
    txt = f"model.language_model.layers.{layer}"
    return [
        (("vision", "patch_embed", "kernel"), "model.visual.patch_embed.proj.weight",
         lambda x: x.reshape(x.shape[0], -1).T),
        (("vision", "patch_embed", "bias"), "model.visual.patch_embed.proj.bias", identity),
        (("vision", "pos_embed"), "model.visual.pos_embed.weight", identity),
        # Vision block and text layer matrices keep HF's (out, in) layout unchanged.
        (("vision", "blocks", block, "norm1_scale"), f"{vis}.norm1.weight", identity),
        (("vision", "blocks", block, "qkv"), f"{vis}.attn.qkv.weight", identity),
        (("vision", "blocks", block, "qkv_bias"), f"{vis}.attn.qkv.bias", identity),
        (("vision", "blocks", block, "proj"), f"{vis}.attn.proj.weight", identity),
        (("vision", "blocks", block, "fc1"), f"{vis}.mlp.linear_fc1.weight", identity),
        (("vision", "blocks", block, "fc2_bias"), f"{vis}.mlp.linear_fc2.bias", identity),
        (("vision", "merger", "norm", "scale"), "model.visual.merger.norm.weight", identity),
        (("vision", "merger", "fc1", "kernel"), "model.visual.merger.linear_fc1.weight", transpose),
        (("vision", "deepstack", "norm", "scale", 1), "model.visual.deepstack_merger_list.1.norm.weight", identity),
        (("vision", "deepstack", "fc2", "kernel", 1), "model.visual.deepstack_merger_list.1.linear_fc2.weight",
         transpose),
        (("text", "embed"), "model.language_model.embed_tokens.weight", identity),
        (("text", "layers", layer, "input_norm"), f"{txt}.input_layernorm.weight", identity),
        (("text", "layers", layer, "q"), f"{txt}.self_attn.q_proj.weight", identity),
        (("text", "layers", layer, "k"), f"{txt}.self_attn.k_proj.weight", identity),
        (("text", "layers", layer, "v"), f"{txt}.self_attn.v_proj.weight", identity),
        (("text", "layers", layer, "o"), f"{txt}.self_attn.o_proj.weight", identity),
        (("text", "layers", layer, "q_norm"), f"{txt}.self_attn.q_norm.weight", identity),
        (("text", "layers", layer, "gate"), f"{txt}.mlp.gate_proj.weight", identity),
        (("text", "layers", layer, "down"), f"{txt}.mlp.down_proj.weight", identity),
        (("text", "final_norm"), "model.language_model.norm.weight", identity),
    ]


def lookup(tree: dict, path: tuple) -> np.ndarray:
    """Follow the keys of `path`. An int selects a text layer, a vision block or a DeepStack merger."""
    node = tree
    for key in path:
        node = node[key]
    return np.asarray(node)


def copy_checkpoint(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination)
    return destination


# ---- values and layouts ----


@pytest.mark.parametrize("name", CHECKPOINTS)
@pytest.mark.parametrize(("layer", "block"), [(0, 0), (2, 1)])
def test_float32_params_equal_hf_state_dict(request, name, layer, block):
    checkpoint = request.getfixturevalue(name)
    config = ModelConfig.from_dir(checkpoint)
    params = our_params(checkpoint, "float32")
    hf = hf_state_dict(checkpoint, torch.float32)
    for path, hf_name, layout in expected_layouts(config, layer, block):
        ours = lookup(params, path)
        assert ours.dtype == np.float32, path
        np.testing.assert_array_equal(ours, layout(hf[hf_name]), err_msg=f"{path} vs {hf_name}")


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_stacked_layers_keep_file_order(request, name):
    checkpoint = request.getfixturevalue(name)
    config = ModelConfig.from_dir(checkpoint)
    params = our_params(checkpoint, "float32")
    hf = hf_state_dict(checkpoint, torch.float32)
    layers = params["text"]["layers"]
    assert len(layers) == config.text.num_hidden_layers
    for i, layer in enumerate(layers):
        norm = np.asarray(layer["post_attention_norm"])
        np.testing.assert_array_equal(norm, hf[f"model.language_model.layers.{i}.post_attention_layernorm.weight"])
    blocks = params["vision"]["blocks"]
    assert len(blocks) == config.vision.depth
    for i, block in enumerate(blocks):
        fc1_bias = np.asarray(block["fc1_bias"])
        np.testing.assert_array_equal(fc1_bias, hf[f"model.visual.blocks.{i}.mlp.linear_fc1.bias"])


def test_untied_lm_head_is_loaded(tiny_untied):
    params = our_params(tiny_untied, "float32")
    hf = hf_state_dict(tiny_untied, torch.float32)
    lm_head = np.asarray(params["text"]["lm_head"])
    np.testing.assert_array_equal(lm_head, hf["lm_head.weight"])
    # The untied fixture's head must differ from its embedding, or this test proves nothing.
    assert not np.array_equal(lm_head, hf["model.language_model.embed_tokens.weight"])


def test_tied_checkpoint_has_no_lm_head(tiny_tied):
    params = our_params(tiny_tied, "float32")
    assert "lm_head" not in params["text"]


def test_patch_embed_kernel_matches_hf_conv(tiny_tied):
    """One matmul with our kernel equals HF's Conv3d patch embedding on flattened patches."""
    model = Qwen3VLForConditionalGeneration.from_pretrained(tiny_tied, dtype=torch.float32)
    params = our_params(tiny_tied, "float32")
    config = ModelConfig.from_dir(tiny_tied)
    pixels = np.random.default_rng(0).standard_normal((7, config.vision.patch_dim)).astype(np.float32)
    with torch.no_grad():
        expected = model.model.visual.patch_embed(torch.from_numpy(pixels)).numpy()
    kernel = np.asarray(params["vision"]["patch_embed"]["kernel"])
    bias = np.asarray(params["vision"]["patch_embed"]["bias"])
    np.testing.assert_allclose(pixels @ kernel + bias, expected, rtol=1e-5, atol=1e-5)


def test_text_q_heads_match_hf_projection(tiny_untied):
    """Head h of our q kernel reproduces HF's q_proj output viewed as (heads, head_dim)."""
    model = Qwen3VLForConditionalGeneration.from_pretrained(tiny_untied, dtype=torch.float32)
    params = our_params(tiny_untied, "float32")
    config = ModelConfig.from_dir(tiny_untied)
    x = np.random.default_rng(1).standard_normal((5, config.text.hidden_size)).astype(np.float32)
    attention = model.model.language_model.layers[1].self_attn
    with torch.no_grad():
        expected = attention.q_proj(torch.from_numpy(x)).view(5, -1, config.text.head_dim).numpy()
    q_kernel = np.asarray(params["text"]["layers"][1]["q"])
    ours = (x @ q_kernel.T).reshape(5, -1, config.text.head_dim)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_every_hf_tensor_is_loaded_once(request, name):
    """The number of loaded values equals the number of values in HF's state dict."""
    checkpoint = request.getfixturevalue(name)
    config = ModelConfig.from_dir(checkpoint)
    params = our_params(checkpoint, "float32")
    hf = hf_state_dict(checkpoint, torch.float32)
    hf_values = sum(v.size for k, v in hf.items() if not (config.tie_word_embeddings and k == "lm_head.weight"))
    assert sum(x.size for x in jax.tree_util.tree_leaves(params)) == hf_values


def test_bfloat16_checkpoint_widens_exactly(tiny_tied):
    """Widening bf16 to float32 is exact, so our float32 values must equal HF's bit for bit."""
    params = our_params(tiny_tied, "float32")
    hf = hf_state_dict(tiny_tied, torch.float32)
    embed = np.asarray(params["text"]["embed"])
    assert embed.dtype == np.float32
    np.testing.assert_array_equal(embed, hf["model.language_model.embed_tokens.weight"])
    # Every value must be representable in bf16: the low 16 bits of each float32 are zero.
    assert not np.any(embed.view(np.uint32) & 0xFFFF)


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_bfloat16_dtype_gives_bfloat16_arrays(request, name):
    checkpoint = request.getfixturevalue(name)
    params = our_params(checkpoint, "bfloat16")
    dtypes = {leaf.dtype for leaf in jax.tree_util.tree_leaves(params)}
    assert dtypes == {np.dtype(ml_dtypes.bfloat16)}


def test_bfloat16_cast_matches_hf_rounding(tiny_untied):
    """Casting float32 to bf16 must round like torch does when HF loads with dtype=bfloat16."""
    config = ModelConfig.from_dir(tiny_untied)
    params = our_params(tiny_untied, "bfloat16")
    hf = hf_state_dict(tiny_untied, torch.bfloat16)
    for path, hf_name, layout in expected_layouts(config, layer=1, block=2):
        ours = lookup(params, path)
        expected = layout(hf[hf_name])
        np.testing.assert_array_equal(ours.view(np.uint16), expected.view(np.uint16), err_msg=str(path))


def test_unknown_dtype_raises(tiny_tied):
    with pytest.raises(ValueError, match="unknown dtype 'float64'"):
        load_params(tiny_tied, ModelConfig.from_dir(tiny_tied), dtype="float64")


# ---- legacy tensor names ----


def legacy_name(name: str) -> str:
    """Rename a transformers 5 tensor to the prefixes that older exports used."""
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model."):]
    if name.startswith("model.visual."):
        return "visual." + name[len("model.visual."):]
    return name


def test_legacy_names_load_identically(tiny_tied, tmp_path):
    checkpoint = copy_checkpoint(tiny_tied, tmp_path / "legacy")
    tensors = load_file(checkpoint / "model.safetensors")
    renamed = {legacy_name(name): value for name, value in tensors.items()}
    assert not any(name.startswith("model.language_model.") for name in renamed)
    assert "visual.patch_embed.proj.weight" in renamed
    save_file(renamed, checkpoint / "model.safetensors", metadata={"format": "pt"})

    config = ModelConfig.from_dir(checkpoint)
    legacy = load_params(checkpoint, config, dtype="float32")
    current = our_params(tiny_tied, "float32")
    legacy_leaves = jax.tree_util.tree_leaves_with_path(legacy)
    current_leaves = jax.tree_util.tree_leaves_with_path(current)
    assert [path for path, _ in legacy_leaves] == [path for path, _ in current_leaves]
    for (path, a), (_, b) in zip(legacy_leaves, current_leaves):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))


# ---- errors ----


def rewrite_shard(checkpoint: Path, shard: str, edit) -> None:
    path = checkpoint / shard
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_missing_tensor_raises(tiny_tied, tmp_path):
    checkpoint = copy_checkpoint(tiny_tied, tmp_path / "ckpt")
    rewrite_shard(checkpoint, "model.safetensors", lambda t: t.pop("model.visual.blocks.1.norm1.weight"))
    with pytest.raises(CheckpointError, match="missing") as error:
        load_params(checkpoint, ModelConfig.from_dir(checkpoint))
    assert "model.visual.blocks.1.norm1.weight" in str(error.value)


def test_unexpected_tensor_raises(tiny_tied, tmp_path):
    checkpoint = copy_checkpoint(tiny_tied, tmp_path / "ckpt")
    extra = np.zeros(4, ml_dtypes.bfloat16)
    rewrite_shard(checkpoint, "model.safetensors", lambda t: t.update({"model.visual.extra_scale.weight": extra}))
    with pytest.raises(CheckpointError, match="unexpected") as error:
        load_params(checkpoint, ModelConfig.from_dir(checkpoint))
    assert "model.visual.extra_scale.weight" in str(error.value)


def test_misshaped_tensor_raises(tiny_tied, tmp_path):
    checkpoint = copy_checkpoint(tiny_tied, tmp_path / "ckpt")
    wrong = np.ones(65, ml_dtypes.bfloat16)
    rewrite_shard(checkpoint, "model.safetensors", lambda t: t.update({"model.language_model.norm.weight": wrong}))
    with pytest.raises(CheckpointError, match="mis-shaped") as error:
        load_params(checkpoint, ModelConfig.from_dir(checkpoint))
    message = str(error.value)
    assert "model.language_model.norm.weight" in message
    assert "(65,)" in message
    assert "(64,)" in message


def test_all_problems_in_one_error(tiny_untied, tmp_path):
    checkpoint = copy_checkpoint(tiny_untied, tmp_path / "ckpt")
    shard = "model-00002-of-00002.safetensors"

    def break_three_ways(tensors):
        tensors.pop("model.language_model.layers.2.mlp.up_proj.weight")
        tensors["model.language_model.layers.3.input_layernorm.weight"] = np.ones(64, np.float32)
        tensors["model.language_model.layers.0.self_attn.k_norm.weight"] = np.ones(31, np.float32)

    rewrite_shard(checkpoint, shard, break_three_ways)
    with pytest.raises(CheckpointError) as error:
        load_params(checkpoint, ModelConfig.from_dir(checkpoint))
    message = str(error.value)
    assert "missing (1): model.language_model.layers.2.mlp.up_proj.weight" in message
    assert "unexpected (1): model.language_model.layers.3.input_layernorm.weight" in message
    assert "mis-shaped (1): model.language_model.layers.0.self_attn.k_norm.weight" in message


def test_truncated_file_raises_naming_it(tiny_untied, tmp_path):
    checkpoint = copy_checkpoint(tiny_untied, tmp_path / "ckpt")
    shard = checkpoint / "model-00001-of-00002.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated") as error:
        load_params(checkpoint, ModelConfig.from_dir(checkpoint))
    assert str(shard) in str(error.value)


def test_no_safetensors_raises(tiny_tied, tmp_path):
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    shutil.copy(tiny_tied / "config.json", checkpoint / "config.json")
    with pytest.raises(CheckpointError, match=r"no \*\.safetensors files") as error:
        load_params(checkpoint, ModelConfig.from_dir(checkpoint))
    assert str(checkpoint) in str(error.value)


def test_index_naming_missing_shard_raises(tiny_untied, tmp_path):
    checkpoint = copy_checkpoint(tiny_untied, tmp_path / "ckpt")
    (checkpoint / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="lists shards that do not exist") as error:
        load_params(checkpoint, ModelConfig.from_dir(checkpoint))
    message = str(error.value)
    assert "model-00002-of-00002.safetensors" in message
    assert "model.safetensors.index.json" in message


def test_duplicate_tensor_across_shards_raises(tiny_untied, tmp_path):
    checkpoint = copy_checkpoint(tiny_untied, tmp_path / "ckpt")
    first = load_file(checkpoint / "model-00001-of-00002.safetensors")
    name = next(iter(first))
    rewrite_shard(checkpoint, "model-00002-of-00002.safetensors", lambda t: t.update({name: first[name]}))
    with pytest.raises(CheckpointError, match="more than once") as error:
        load_params(checkpoint, ModelConfig.from_dir(checkpoint))
    assert name in str(error.value)


def test_legacy_and_current_name_raise(tiny_tied, tmp_path):
    """One tensor under both its old and its new name is a duplicate, not a silent pick."""
    checkpoint = copy_checkpoint(tiny_tied, tmp_path / "ckpt")
    name = "model.language_model.norm.weight"
    rewrite_shard(checkpoint, "model.safetensors", lambda t: t.update({legacy_name(name): t[name]}))
    with pytest.raises(CheckpointError, match="more than once") as error:
        load_params(checkpoint, ModelConfig.from_dir(checkpoint))
    assert name in str(error.value)


def test_shards_outside_index_ignored(tiny_untied, tmp_path):
    """Shards on disk that the index does not name are not read."""
    checkpoint = copy_checkpoint(tiny_untied, tmp_path / "ckpt")
    save_file({"stray.weight": np.zeros(2, np.float32)}, checkpoint / "stray.safetensors")
    index = json.loads((checkpoint / "model.safetensors.index.json").read_text())
    assert "stray.safetensors" not in index["weight_map"].values()
    params = load_params(checkpoint, ModelConfig.from_dir(checkpoint), dtype="float32")
    np.testing.assert_array_equal(
        np.asarray(params["text"]["final_norm"]), our_params(tiny_untied, "float32")["text"]["final_norm"]
    )
