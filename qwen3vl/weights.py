"""HF safetensors -> parameter tree, with every parameter declared once.

Each entry of `declare_params` names one tensor of the HF checkpoint, its shape there, where it
goes in our tree and how it is laid out for the math. Loading checks the file against the declarations and raises one error that lists
every missing, unexpected, duplicate or mis-shaped tensor: nothing is skipped and nothing is left
at a random init.

Layouts, chosen for speed:

* the matrices of the vision blocks and text layers keep HF's (out, in) layout unchanged, and each
  block or layer keeps its own arrays (a list of per-layer dicts), run by an unrolled loop.
  Decoding reads every text weight once per token. On XLA's CPU backend a (1, in) x (out, in)
  product runs near memory bandwidth, but slicing one layer out of a stacked array inside a loop
  copies it first, and for bfloat16 converts it to float32. Measured on a 2-core x86 machine
  (AVX-512), 28 layers of 2048 x 6144 float32 weights took 45 ms per step from per-layer arrays
  and 240 ms under `lax.scan` over a stacked array. The 2B vision tower in bfloat16 took 1.1 s
  under `lax.scan` and 0.32 s unrolled.
  Splitting the heads out of the matrices (a 3D operand) made the same products 10 times
  slower there, so heads are split from the activations after each product instead;
* the patch embed and the mergers are (in, out) kernels; the three DeepStack mergers are stacked
  and run under `vmap`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors import SafetensorError

from qwen3vl.config import ModelConfig

logger = logging.getLogger(__name__)

DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


class CheckpointError(ValueError):
    """A checkpoint whose files do not match the model its config describes."""


@dataclasses.dataclass(frozen=True)
class Param:
    path: tuple[str, ...]  # where the array lives in our tree
    hf_name: str  # HF tensor name; "{i}" marks the layer index of a stacked parameter
    hf_shape: tuple[int, ...]
    layout: Callable[[np.ndarray], np.ndarray] = lambda x: x  # HF layout -> ours
    count: int = 0  # number of layers; 0 for a parameter that is not per layer
    stacked: bool = True  # per-layer arrays stacked on a leading axis, or kept as a list

    def hf_names(self) -> list[str]:
        if not self.count:
            return [self.hf_name]
        return [self.hf_name.format(i=i) for i in range(self.count)]


def _transpose(x):
    return x.T


def _linear(path, name, n_in, n_out, bias=True, count=0):
    params = [Param((*path, "kernel"), f"{name}.weight", (n_out, n_in), _transpose, count)]
    if bias:
        params.append(Param((*path, "bias"), f"{name}.bias", (n_out,), count=count))
    return params


def _layer_norm(path, name, width, count=0):
    return [
        Param((*path, "scale"), f"{name}.weight", (width,), count=count),
        Param((*path, "bias"), f"{name}.bias", (width,), count=count),
    ]


def _merger(path, name, config: ModelConfig, norm_width, count=0):
    vision = config.vision
    merged = vision.hidden_size * vision.merge_unit
    return [
        *_layer_norm((*path, "norm"), f"{name}.norm", norm_width, count),
        *_linear((*path, "fc1"), f"{name}.linear_fc1", merged, merged, count=count),
        *_linear((*path, "fc2"), f"{name}.linear_fc2", merged, vision.out_hidden_size, count=count),
    ]


def declare_vision_params(config: ModelConfig) -> list[Param]:
    v = config.vision
    hidden = v.hidden_size
    block = "model.visual.blocks.{i}"
    per_block = dict(count=v.depth, stacked=False)

    def block_param(name, hf_suffix, shape):
        return Param(("vision", "blocks", name), f"{block}.{hf_suffix}", shape, **per_block)

    return [
        Param(("vision", "patch_embed", "kernel"), "model.visual.patch_embed.proj.weight",
              (hidden, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size),
              lambda x: x.reshape(x.shape[0], -1).T),
        Param(("vision", "patch_embed", "bias"), "model.visual.patch_embed.proj.bias", (hidden,)),
        Param(("vision", "pos_embed"), "model.visual.pos_embed.weight", (v.num_position_embeddings, hidden)),
        block_param("norm1_scale", "norm1.weight", (hidden,)),
        block_param("norm1_bias", "norm1.bias", (hidden,)),
        block_param("qkv", "attn.qkv.weight", (3 * hidden, hidden)),
        block_param("qkv_bias", "attn.qkv.bias", (3 * hidden,)),
        block_param("proj", "attn.proj.weight", (hidden, hidden)),
        block_param("proj_bias", "attn.proj.bias", (hidden,)),
        block_param("norm2_scale", "norm2.weight", (hidden,)),
        block_param("norm2_bias", "norm2.bias", (hidden,)),
        block_param("fc1", "mlp.linear_fc1.weight", (v.intermediate_size, hidden)),
        block_param("fc1_bias", "mlp.linear_fc1.bias", (v.intermediate_size,)),
        block_param("fc2", "mlp.linear_fc2.weight", (hidden, v.intermediate_size)),
        block_param("fc2_bias", "mlp.linear_fc2.bias", (hidden,)),
        *_merger(("vision", "merger"), "model.visual.merger", config, hidden),
        *_merger(("vision", "deepstack"), "model.visual.deepstack_merger_list.{i}", config,
                 hidden * v.merge_unit, count=len(v.deepstack_visual_indexes)),
    ]


def declare_text_params(config: ModelConfig) -> list[Param]:
    t = config.text
    hidden, head_dim = t.hidden_size, t.head_dim
    q_heads, kv_heads = t.num_attention_heads, t.num_key_value_heads
    layer = "model.language_model.layers.{i}"
    per_layer = dict(count=t.num_hidden_layers, stacked=False)
    params = [
        Param(("text", "embed"), "model.language_model.embed_tokens.weight", (t.vocab_size, hidden)),
        Param(("text", "layers", "input_norm"), f"{layer}.input_layernorm.weight", (hidden,), **per_layer),
        Param(("text", "layers", "post_attention_norm"), f"{layer}.post_attention_layernorm.weight",
              (hidden,), **per_layer),
        Param(("text", "layers", "q"), f"{layer}.self_attn.q_proj.weight", (q_heads * head_dim, hidden),
              **per_layer),
        Param(("text", "layers", "k"), f"{layer}.self_attn.k_proj.weight", (kv_heads * head_dim, hidden),
              **per_layer),
        Param(("text", "layers", "v"), f"{layer}.self_attn.v_proj.weight", (kv_heads * head_dim, hidden),
              **per_layer),
        Param(("text", "layers", "o"), f"{layer}.self_attn.o_proj.weight", (hidden, q_heads * head_dim),
              **per_layer),
        Param(("text", "layers", "q_norm"), f"{layer}.self_attn.q_norm.weight", (head_dim,), **per_layer),
        Param(("text", "layers", "k_norm"), f"{layer}.self_attn.k_norm.weight", (head_dim,), **per_layer),
        Param(("text", "layers", "gate"), f"{layer}.mlp.gate_proj.weight", (t.intermediate_size, hidden),
              **per_layer),
        Param(("text", "layers", "up"), f"{layer}.mlp.up_proj.weight", (t.intermediate_size, hidden),
              **per_layer),
        Param(("text", "layers", "down"), f"{layer}.mlp.down_proj.weight", (hidden, t.intermediate_size),
              **per_layer),
        Param(("text", "final_norm"), "model.language_model.norm.weight", (hidden,)),
    ]
    if not config.tie_word_embeddings:
        params.append(Param(("text", "lm_head"), "lm_head.weight", (t.vocab_size, hidden)))
    return params


def declare_params(config: ModelConfig) -> list[Param]:
    return declare_vision_params(config) + declare_text_params(config)


# Older transformers versions and other exporters wrote the same tensors under other prefixes.
_PREFIX_ALIASES = (
    ("model.language_model.", "model.language_model."),
    ("model.visual.", "model.visual."),
    ("language_model.model.", "model.language_model."),
    ("language_model.lm_head.", "lm_head."),
    ("language_model.", "model.language_model."),
    ("model.", "model.language_model."),
    ("visual.", "model.visual."),
)


def canonical_name(name: str) -> str:
    """Map a tensor name from any known export to the name transformers 5 uses."""
    if name.startswith("lm_head."):
        return name
    for prefix, replacement in _PREFIX_ALIASES:
        if name.startswith(prefix):
            return replacement + name[len(prefix):]
    return name


def checkpoint_files(checkpoint_dir: Path) -> list[Path]:
    """List the safetensors files of a checkpoint: the index's shards, or the single file."""
    index = checkpoint_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_weight_map(index)
        files = [checkpoint_dir / name for name in sorted(set(weight_map.values()))]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(
                f"{index} lists shards that do not exist: {', '.join(missing)}; download the missing files"
            )
        return files
    files = sorted(checkpoint_dir.glob("*.safetensors"))
    if not files:
        raise CheckpointError(
            f"no *.safetensors files in {checkpoint_dir}; the directory must hold the model weights "
            "in safetensors format (PyTorch .bin checkpoints are not supported)"
        )
    return files


def _read_weight_map(index: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(index.read_text()).get("weight_map")
    except (json.JSONDecodeError, AttributeError) as error:
        raise CheckpointError(f"{index} is not a valid JSON object ({error}); download it again") from error
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index} has no weight_map object; download it again")
    return weight_map


def _open_all(files: list[Path]) -> dict[str, tuple[Path, str]]:
    """Map each canonical tensor name to (file, name in file); duplicates raise."""
    located: dict[str, tuple[Path, str]] = {}
    duplicates = []
    for file in files:
        try:
            with safe_open(file, framework="numpy") as handle:
                names = list(handle.keys())
        except (SafetensorError, OSError) as error:
            raise CheckpointError(
                f"cannot read {file}: {error}; the file is truncated or corrupt, so download it again"
            ) from error
        for name in names:
            key = canonical_name(name)
            if key in located:
                duplicates.append(f"{key} (in {located[key][0].name} and {file.name})")
            located[key] = (file, name)
    if duplicates:
        raise CheckpointError(
            "tensors stored more than once: " + "; ".join(duplicates) + "; remove the stale file from the directory"
        )
    return located


def _shape_of(file: Path, name: str) -> tuple[int, ...]:
    with safe_open(file, framework="numpy") as handle:
        return tuple(handle.get_slice(name).get_shape())


def validate(declared: list[Param], located: dict[str, tuple[Path, str]]) -> None:
    """Raise one CheckpointError listing every missing, unexpected and mis-shaped tensor."""
    expected = {name: p.hf_shape for p in declared for name in p.hf_names()}
    missing = sorted(set(expected) - set(located))
    unexpected = sorted(set(located) - set(expected))
    misshaped = []
    for name in sorted(set(expected) & set(located)):
        shape = _shape_of(*located[name])
        if shape != expected[name]:
            misshaped.append(f"{name}: file has {shape}, config needs {expected[name]}")
    problems = []
    if missing:
        problems.append(f"missing ({len(missing)}): " + ", ".join(missing))
    if unexpected:
        problems.append(f"unexpected ({len(unexpected)}): " + ", ".join(unexpected))
    if misshaped:
        problems.append(f"mis-shaped ({len(misshaped)}): " + "; ".join(misshaped))
    if problems:
        raise CheckpointError(
            "the checkpoint's tensors do not match its config.json:\n  " + "\n  ".join(problems)
            + "\nCheck that config.json belongs to these weights, or download the checkpoint again"
        )


def load_params(
    checkpoint_dir: str | Path,
    config: ModelConfig,
    dtype: str = "bfloat16",
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Load an HF Qwen3-VL checkpoint directory into our parameter tree in `dtype`.

    Tensors are read one at a time and cast in numpy before they reach the device, so peak host
    memory stays near one copy of the weights in `dtype`. `progress(done, total)` is called after
    each parameter.
    """
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    checkpoint_dir = Path(checkpoint_dir)
    declared = declare_params(config)
    located = _open_all(checkpoint_files(checkpoint_dir))
    validate(declared, located)

    target = DTYPES[dtype]
    tree: dict = {}
    for done, param in enumerate(declared, start=1):
        if param.count and not param.stacked:
            for i, name in enumerate(param.hf_names()):
                array = jnp.asarray(param.layout(_read_tensor(*located[name], target)))
                _set_in_layer(tree, param.path, i, param.count, array)
        else:
            _set(tree, param.path, jnp.asarray(_read_param(param, located, target)))
        if progress is not None:
            progress(done, len(declared))
    logger.info("loaded %d tensors from %s as %s", sum(len(p.hf_names()) for p in declared), checkpoint_dir, dtype)
    return tree


def _read_param(param: Param, located, target) -> np.ndarray:
    if not param.count:
        return param.layout(_read_tensor(*located[param.hf_name], target))
    stacked = None
    for i, name in enumerate(param.hf_names()):
        layer = param.layout(_read_tensor(*located[name], target))
        if stacked is None:
            stacked = np.empty((param.count, *layer.shape), dtype=target)
        stacked[i] = layer
    return stacked


def _read_tensor(file: Path, name: str, target) -> np.ndarray:
    with safe_open(file, framework="numpy") as handle:
        return handle.get_tensor(name).astype(target, copy=False)


def _set_in_layer(tree: dict, path: tuple[str, ...], index: int, count: int, value) -> None:
    """Store `value` at path[-1] of layer `index` in the list of per-layer dicts at path[:-1]."""
    for key in path[:-2]:
        tree = tree.setdefault(key, {})
    layers = tree.setdefault(path[-2], [{} for _ in range(count)])
    layers[index][path[-1]] = value


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def param_bytes(params) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(params))
